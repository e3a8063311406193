#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build sdcore's CUDA library (tools/gpu_build.sh, into
# /tmp/sdcore/sdcore/libsdcore_cuda.so), build the backend comparison runner
# tests/c/backend_ops with libsdcore.a, and run every op of the backend table on the
# CUDA backend against the CPU backend in float32, float16 and bfloat16. The table goes
# to $OUT/backend_ops.txt (build log beside it); the exit status is the runner's: 1 when
# any op FAILs. No CUDA device is an error here (the runner alone would skip).
# Usage: bash tools/gpu_backend_ops.sh [runner arguments, e.g. --op attention --seed 7]
#   SDCORE_BUILT=1: the CUDA library is already in /tmp/sdcore (skip tools/gpu_build.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/sdcore-gpu}
mkdir -p "$out"
lib_dir=/tmp/sdcore/sdcore

die() {
    echo "gpu_backend_ops: $*" >&2
    exit 1
}

for tool in make "${CC:-cc}" python3; do
    command -v "$tool" >/dev/null || die "$tool is not installed (needed to build the runner)"
done

[ -n "${SDCORE_BUILT:-}" ] || bash tools/gpu_build.sh || die "tools/gpu_build.sh failed (log: $out/build.log)"
[ -e "$lib_dir/libsdcore_cuda.so" ] || die "no $lib_dir/libsdcore_cuda.so: the CUDA build did not produce it (log: $out/build.log)"

# csrc/Makefile finds OpenBLAS through Python's scipy_openblas32 (a carried wheel in /tmp/site)
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import scipy_openblas32" 2>/dev/null ||
    die "python3 cannot import scipy_openblas32 (pip install scipy-openblas32, or carry its wheel in .whl/)"

echo "gpu_backend_ops: building tests/c/backend_ops (log: $out/backend_ops_build.log)"
if ! make -C tests/c -j"$(nproc)" PYTHON=python3 >"$out/backend_ops_build.log" 2>&1; then
    tail -40 "$out/backend_ops_build.log" >&2
    die "building the runner failed (log: $out/backend_ops_build.log)"
fi

set +e
tests/c/backend_ops --lib-dir "$lib_dir" "$@" 2>&1 | tee "$out/backend_ops.txt"
status=${PIPESTATUS[0]}
set -e
if head -1 "$out/backend_ops.txt" | grep -q '^no CUDA device'; then
    die "the runner found no usable CUDA device (see $out/backend_ops.txt)"
fi
echo "gpu_backend_ops: runner exit status $status; table in $out/backend_ops.txt"
exit "$status"

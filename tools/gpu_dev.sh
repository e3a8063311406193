#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build and run every kernels/dev/*.cu check-and-time
# harness (or the ones named), each a standalone program that exits non-zero when a
# kernel version disagrees with its CPU reference. The builds run side by side; the
# harnesses one after another (they time). Logs under $OUT when set.
set -uo pipefail
cd "$(dirname "$0")/.."
nvcc=${NVCC:-/usr/local/cuda/bin/nvcc}
arch=${SDCORE_DEV_ARCH:-sm_90}
out=${OUT:-/tmp/sdcore-dev}
mkdir -p "$out"
status=0
files=()
for src in "${@:-kernels/dev/*.cu}"; do
    for f in $src; do
        files+=("$f")
    done
done
for f in "${files[@]}"; do
    name=$(basename "$f" .cu)
    "$nvcc" -O3 -std=c++17 -arch="$arch" -Icsrc -Ikernels "$f" -o "/tmp/dev_$name" \
        -L/usr/local/cuda/lib64 -lcublas > "$out/dev_$name.build.log" 2>&1 &
done
wait
for f in "${files[@]}"; do
    name=$(basename "$f" .cu)
    echo "== $name"
    if [ ! -x "/tmp/dev_$name" ]; then
        cat "$out/dev_$name.build.log"
        status=1
        continue
    fi
    "/tmp/dev_$name" 2>&1 | tee "$out/dev_$name.log" || status=1
done
exit $status

#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: install the carried wheels (.whl/*.whl) into /tmp/site
# and build sdcore with its CUDA backend into /tmp/sdcore. Source it, or run it and set
# PYTHONPATH=/tmp/sdcore:/tmp/site afterwards. Build log under $OUT when set.
set -euo pipefail
out=${OUT:-/tmp/sdcore-gpu}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
SDCORE_CUDA=1 PYTHONPATH=/tmp/site python3 -m pip install -q --no-build-isolation --no-deps \
    --target /tmp/sdcore --upgrade . 2>&1 | tee "$out/build.log" | grep -E "error|sdcore build" || true
test -e /tmp/sdcore/sdcore/libsdcore_cuda.so || { echo "CUDA library not built"; tail -50 "$out/build.log"; exit 1; }

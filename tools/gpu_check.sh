#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build sdcore with its CUDA backend and run the test
# suite there (CUDA tests included). Carried wheels in .whl/ are installed first.
# Usage: bash tools/gpu_check.sh [test files relative to the repo, e.g. tests/test_cuda.py]
# (all of tests/ when none are named; logs under $OUT when set)
set -euo pipefail
export SDCORE_CUDA=1
out=${OUT:-/tmp/sdcore-gpu}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
SDCORE_CUDA=1 python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/sdcore . \
    2>&1 | tee "$out/build.log" | grep -E "error|sdcore build" || true
export PYTHONPATH=/tmp/sdcore:$PYTHONPATH
repo=$(pwd)
# run from outside the checkout so its sdcore/ (no compiled extension) does not shadow the build
cd /tmp
python3 -c "import sdcore; print(sdcore.__file__, sdcore.cuda_available(), sdcore.cuda_devices())"
targets=()
for t in "${@:-tests}"; do targets+=("$repo/$t"); done
python3 -m pytest -q -p no:cacheprovider --maxfail=30 "${targets[@]}" 2>&1 | tee "$out/pytest.log"

#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build sdcore with its CUDA backend and run the test
# suite there (CUDA tests included). Carried wheels in .whl/ are installed first.
# Usage: bash tools/gpu_check.sh [test files relative to the repo, e.g. tests/test_cuda.py]
# (all of tests/ when none are named; logs under $OUT when set)
set -euo pipefail
export SDCORE_CUDA=1
out=${OUT:-/tmp/sdcore-gpu}
[ -n "${SDCORE_BUILT:-}" ] || bash tools/gpu_build.sh
export PYTHONPATH=/tmp/sdcore:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
repo=$(pwd)
# run from outside the checkout so its sdcore/ (no compiled extension) does not shadow the build
cd /tmp
python3 -c "import sdcore; print(sdcore.__file__, sdcore.cuda_available(), sdcore.cuda_devices())"
targets=()
for t in "${@:-tests}"; do targets+=("$repo/$t"); done
python3 -m pytest -q -p no:cacheprovider --maxfail=30 "${targets[@]}" 2>&1 | tee "$out/pytest.log"

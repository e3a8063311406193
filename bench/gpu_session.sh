#!/usr/bin/env bash
# One call on a GPU machine: build for its architecture, run the kernel harnesses, the
# CUDA tests and bench/gpu.py, each under its own time limit, logs under $OUT.
# Usage: bash bench/gpu_session.sh [harness|tests|bench ...]   (default: all three)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/sdcore-gpu}
mkdir -p "$out"
steps=${*:-harness tests bench}
export SDCORE_CUDA_ARCH="-gencode=arch=compute_90,code=sm_90"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
for step in $steps; do
    case $step in
    harness)
        stamp harnesses
        timeout ${HARNESS_S:-120} bash tools/gpu_dev.sh > "$out/harness.log" 2>&1
        echo "harness exit $?" >> "$out/harness.log"
        ;;
    tests)
        stamp tests
        timeout ${TESTS_S:-300} bash tools/gpu_check.sh ${TESTS:-tests/test_cuda.py tests/test_cuda_elementwise.py tests/test_cuda_norm.py tests/test_cuda_attention.py tests/test_cuda_models.py} > "$out/tests.log" 2>&1
        echo "tests exit $?" >> "$out/tests.log"
        ;;
    bench)
        stamp bench
        PYTHONPATH=/tmp/site:/tmp/sdcore timeout ${BENCH_S:-240} python3 bench/gpu.py ${BENCH_ARGS:-} --json "$out/gpu.json" > "$out/bench.log" 2>&1
        echo "bench exit $?" >> "$out/bench.log"
        ;;
    esac
done
stamp done

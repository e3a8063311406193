#!/usr/bin/env bash
# One call on a GPU machine: build for its architecture, then run the steps named, each
# under its own time limit. Logs are gathered into $OUT/session.tar.gz (one file) and the
# last lines of each are printed.
# Usage: bash bench/gpu_session.sh [harness|tests|bench|memory|profile ...]   (default: the first three)
#   TESTS="tests/test_cuda.py ..."  BENCH_ARGS="--no-compile"  PROFILE="sdcore:unet ..."
#   HARNESS_S, TESTS_S, BENCH_S, MEMORY_S, PROFILE_S: seconds for each step
set -uo pipefail
cd "$(dirname "$0")/.."
final=${OUT:-/tmp/sdcore-gpu}
export OUT=/tmp/sdcore-session
rm -rf "$OUT"
mkdir -p "$OUT" "$final"
steps=${*:-harness tests bench}
export SDCORE_CUDA_ARCH="-gencode=arch=compute_90,code=sm_90"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
stamp build
bash tools/gpu_build.sh > "$OUT/build.out" 2>&1 || { tail -40 "$OUT/build.out"; exit 1; }
export SDCORE_BUILT=1
for step in $steps; do
    case $step in
    harness)
        stamp harnesses
        timeout ${HARNESS_S:-300} bash tools/gpu_dev.sh > "$OUT/harness.log" 2>&1
        echo "harness exit $?" >> "$OUT/harness.log"
        ;;
    tests)
        stamp tests
        timeout ${TESTS_S:-300} bash tools/gpu_check.sh ${TESTS:-tests/test_cuda.py tests/test_cuda_elementwise.py tests/test_cuda_norm.py tests/test_cuda_attention.py tests/test_cuda_sampler.py tests/test_cuda_models.py} > "$OUT/tests.log" 2>&1
        echo "tests exit $?" >> "$OUT/tests.log"
        ;;
    bench)
        stamp bench
        PYTHONPATH=/tmp/sdcore:/tmp/site timeout ${BENCH_S:-240} python3 bench/gpu.py ${BENCH_ARGS:-} --json "$OUT/gpu.json" > "$OUT/bench.log" 2>&1
        echo "bench exit $?" >> "$OUT/bench.log"
        ;;
    memory)
        stamp memory
        PYTHONPATH=/tmp/sdcore:/tmp/site timeout ${MEMORY_S:-180} python3 tools/gpu_memory.py > "$OUT/memory.log" 2>&1
        echo "memory exit $?" >> "$OUT/memory.log"
        ;;
    profile)
        stamp profile
        timeout ${PROFILE_S:-300} bash tools/gpu_profile.sh ${PROFILE:-sdcore:unet sdcore:vae} > "$OUT/profile.log" 2>&1
        echo "profile exit $?" >> "$OUT/profile.log"
        ;;
    esac
done
stamp done
tar -C "$OUT" -czf "$final/session.tar.gz" .
for f in "$OUT"/*.log; do
    echo "== $(basename "$f")"
    tail -n ${TAIL:-25} "$f"
done

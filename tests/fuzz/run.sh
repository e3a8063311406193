#!/usr/bin/env bash
# Coverage-guided fuzzing of sdcore's untrusted parsers, every target for a bounded time.
#
#   bash tests/fuzz/run.sh                    # every target, SDCORE_FUZZ_SECONDS each (30)
#   SDCORE_FUZZ_SECONDS=600 bash tests/fuzz/run.sh safetensors
#
# Targets:
#   json, safetensors  libFuzzer (clang), linking csrc/io/*.c and the few core files they
#                      need, with ASan and UBSan: coverage of the C code itself, which needs
#                      clang's SanitizerCoverage (gcc builds the extension and has none)
#   prompt, tokenizer  atheris over sdcore/prompt.py and sdcore/tokenizer.py
# Each starts from tests/fuzz/corpus/<target>/ (never written to: new inputs go to a scratch
# directory). A crash, a sanitizer report, a timeout or an exception the target does not
# allow stops that target; its input is saved under build/fuzz/artifacts/ and the script
# exits non-zero after running the rest.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
python=${PYTHON:-python}
seconds=${SDCORE_FUZZ_SECONDS:-30}
build=$root/build/fuzz
artifacts=$build/artifacts
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$build" "$artifacts"
if [ $# -eq 0 ]; then set -- json safetensors prompt tokenizer; fi

c_sources_json="csrc/io/json.c csrc/core/status.c"
c_sources_safetensors="csrc/io/json.c csrc/io/safetensors.c csrc/core/status.c \
    csrc/core/weights.c csrc/core/tensor.c csrc/core/cuda_loader.c"
build_c_target() { # name: build/fuzz/<name> from tests/fuzz/<name>_fuzzer.c
    command -v clang >/dev/null ||
        { echo "fuzz: the C targets need clang with libFuzzer (apt-get install clang)" >&2; exit 1; }
    local sources=c_sources_$1
    # shellcheck disable=SC2086
    clang -g -O1 -std=c11 -D_GNU_SOURCE -Icsrc \
        -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
        "tests/fuzz/$1_fuzzer.c" ${!sources} -ldl -o "$build/$1"
}

status=0
for target in "$@"; do
    mkdir -p "$work/$target"
    flags=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$artifacts/$target-" "$work/$target" "tests/fuzz/corpus/$target")
    case $target in
    json | safetensors)
        build_c_target "$target"
        cmd=("$build/$target" -dict=tests/fuzz/safetensors.dict "${flags[@]}")
        ;;
    prompt | tokenizer)
        cmd=("$python" tests/fuzz/fuzz_python.py "$target" "${flags[@]}")
        ;;
    *) echo "fuzz: unknown target '$target'" >&2; exit 2 ;;
    esac
    start=$SECONDS
    if UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH} \
        "${cmd[@]}" > "$work/$target.log" 2>&1; then
        runs=$(grep -o 'Done [0-9]* runs' "$work/$target.log" | tail -1)
        echo "fuzz: $target: ok, ${runs#Done } in $((SECONDS - start)) s" >&2
    else
        status=1
        tail -60 "$work/$target.log" >&2
        echo "fuzz: $target: FAILED after $((SECONDS - start)) s; inputs in $artifacts/" >&2
    fi
done
exit $status

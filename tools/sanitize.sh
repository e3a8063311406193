#!/usr/bin/env bash
# The extension built with AddressSanitizer and UndefinedBehaviorSanitizer, and the C-heavy
# tests and the fuzz corpus run against it (CPU only). See docs/asan.md.
#
#   bash tools/sanitize.sh                 # build (incrementally) and run the default tests
#   bash tools/sanitize.sh tests/test_x.py -k y    # other pytest arguments instead
#
# The build goes to build/sanitize/ and never replaces the normal in-place build: the tests
# import a staged copy of the package, build/sanitize/stage/sdcore/, whose files link to
# those of sdcore/ except the extension itself. Any ASan or UBSan report stops the run with
# a non-zero status (UBSan does not recover: -fno-sanitize-recover, halt_on_error).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python}
dir=$root/build/sanitize
stage=$dir/stage

mkdir -p "$dir"
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
echo "sanitize: building sdcore._C with ASan + UBSan into $dir" >&2
start=$SECONDS
CFLAGS="$san" LDFLAGS="$san" SDCORE_CUDA=0 "$python" setup.py -q build_ext \
    --build-lib "$dir/lib" --build-temp "$dir/temp" > "$dir/build.log" 2>&1 ||
    { tail -40 "$dir/build.log"; echo "sanitize: build failed ($dir/build.log)" >&2; exit 1; }
echo "sanitize: built in $((SECONDS - start)) s" >&2

# the staged package: sdcore/ file by file, the sanitized extension in place of the normal one
rm -rf "$stage"
mkdir -p "$stage/sdcore"
for f in "$root"/sdcore/*; do
    case $(basename "$f") in
    _C.*.so | libsdcore_cuda.so | __pycache__) ;;
    *) ln -s "$f" "$stage/sdcore/" ;;
    esac
done
cp "$dir"/lib/sdcore/_C.*.so "$stage/sdcore/"

libasan=$(gcc -print-file-name=libasan.so)
[ -e "$libasan" ] || { echo "sanitize: libasan not found ($libasan)" >&2; exit 1; }
# libstdc++ too: ASan intercepts __cxa_throw only if it is loaded at start, and a C++
# library (torch) that throws later would otherwise stop ASan with a failed CHECK
libstdcxx=$(gcc -print-file-name=libstdc++.so)

if [ $# -eq 0 ]; then
    set -- tests/test_safetensors.py tests/test_checkpoint.py tests/test_ops.py \
        tests/test_ops_layout.py tests/test_binding.py tests/test_png.py tests/test_rng.py \
        tests/test_prompt.py tests/test_tokenizer.py tests/fuzz/test_corpus.py
fi

# Python is not built with ASan: its runtime is preloaded, and CPython's own allocations
# would flood the leak report. pytest runs from the stage so that `import sdcore` finds the
# staged package before the checkout's; the checkout follows on the path for the rest.
cd "$stage"
export LD_PRELOAD="$libasan $libstdcxx"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:halt_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export PYTHONPATH=$stage:$root${PYTHONPATH:+:$PYTHONPATH}
args=()
for a in "$@"; do # test paths are given from the checkout's root
    if [ -e "$root/$a" ] || [ -e "$root/${a%%::*}" ]; then args+=("$root/$a"); else args+=("$a"); fi
done
"$python" -c "import sdcore, sys; sys.exit(0 if sdcore.__file__.startswith('$stage/') else 1)" ||
    { echo "sanitize: the staged package is not the one imported" >&2; exit 1; }
start=$SECONDS
# --capture=sys: a sanitizer writes its report to fd 2 and stops the process, and pytest's
# default capture of fd 2 would lose it
"$python" -m pytest -q -p no:cacheprovider --capture=sys --rootdir "$root" -c "$root/pyproject.toml" "${args[@]}"
echo "sanitize: tests passed under ASan + UBSan in $((SECONDS - start)) s" >&2

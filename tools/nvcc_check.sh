#!/usr/bin/env bash
# Compile each kernels/*.cu (or the files named) for sm_80 and sm_90 without building the package:
# a quick check that CUDA code compiles on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc=${NVCC:-/usr/local/cuda/bin/nvcc}
inc=$(python3 -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'include'))" 2>/dev/null || echo /usr/local/cuda/include)
out=$(mktemp -d)
status=0
for f in "${@:-kernels/*.cu}"; do
    for g in $f; do
        extra=""
        [ "$(basename "$g")" = sampler.cu ] && extra="-fmad=false" # as setup.py compiles it
        "$nvcc" $extra -O3 -std=c++17 -Xcompiler -fPIC -Icsrc -Ikernels -I"$inc" \
            -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90 -c "$g" -o "$out/$(basename "$g").o" || status=1
    done
done
rm -rf "$out"
exit $status

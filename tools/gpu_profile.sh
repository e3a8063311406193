#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build sdcore, then profile one UNet step and one VAE
# decode (random SD 1.5, 512x512, f16) of sdcore and of diffusers eager with Nsight
# Compute, kernel by kernel, and print where the time goes. Results under $OUT.
# Usage: bash tools/gpu_profile.sh [sdcore:unet sdcore:vae diffusers:unet diffusers:vae]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/sdcore-gpu}
mkdir -p "$out"
export SDCORE_CUDA_ARCH=${SDCORE_CUDA_ARCH:-"-gencode=arch=compute_90,code=sm_90"}
[ -n "${SDCORE_BUILT:-}" ] || bash tools/gpu_build.sh || exit 1
export PYTHONPATH=/tmp/sdcore:/tmp/site
repo=$(pwd)
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
folder=/tmp/sd15
cd /tmp
[ -d $folder/unet ] || python3 "$repo/tools/gpu_profile.py" build $folder
for case in ${*:-sdcore:unet sdcore:vae diffusers:unet diffusers:vae}; do
    who=${case%:*} what=${case#*:}
    timeout ${PROFILE_S:-240} "$ncu" --clock-control none --nvtx --nvtx-include "measure/" \
        --metrics gpu__time_duration.sum --csv --page raw --log-file "$out/ncu_${who}_${what}.csv" \
        python3 "$repo/tools/gpu_profile.py" run $folder $who $what > "/tmp/run_${who}_$what.log" 2>&1 || tail -20 "/tmp/run_${who}_$what.log"
    echo "$case exit $?"
    python3 "$repo/tools/gpu_profile.py" summary "$out/ncu_${who}_${what}.csv"
done

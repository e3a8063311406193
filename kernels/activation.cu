// gelu, quick_gelu, silu, geglu on the CUDA backend.
#include "cuda_common.cuh"

void cuda_fill_activation(sd_backend *) {}

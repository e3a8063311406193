// The samplers' element-wise updates on the GPU, so that latents stay on the device for
// the whole denoising loop.
//
// The arithmetic is core/sampler_ops.h, the same expressions the CPU runs; setup.py
// compiles this file with -fmad=false so that no multiply and add fuse into one rounding,
// as they do not on the CPU: both devices then agree bit for bit. An update touches a few
// thousand latents; one thread each is plenty.
#include "cuda_common.cuh"
#include "core/sampler_ops.h"

namespace {

__global__ void sampler_op_kernel(sd_sampler_op op) {
    int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k < op.n)
        op.out[k] = sd_sampler_op_elem(&op, k);
}

static sd_status cuda_sampler_op(const sd_backend *, const sd_sampler_op *op) {
    int inputs = sd_sampler_op_inputs(op);
    if (inputs < 0)
        return g_host->fail(SD_ERR_INVALID, "sampler_op: unknown kind %d or flags %d", op->kind,
                            op->flags);
    if (op->n < 0 || !op->out)
        return g_host->fail(SD_ERR_INVALID, "sampler_op: no output");
    for (int j = 0; j < inputs; j++)
        if (!op->in[j])
            return g_host->fail(SD_ERR_INVALID, "sampler_op: input %d is missing", j);
    if (op->n == 0)
        return SD_OK;
    sampler_op_kernel<<<cuda_blocks(op->n, 256), 256, 0, cuda_stream()>>>(*op);
    return cuda_launched("sampler_op_kernel");
}

} // namespace

void cuda_fill_sampler(sd_backend *be) {
    be->sampler_op = cuda_sampler_op;
}

// upsample_nearest2x, concat_channels, transpose_last2, pad_bottom_right,
// timestep_embedding and embedding on the CUDA backend.
//
// The first four only move elements, so their kernels work on raw bits of the element's
// size (uint32_t for f32, uint16_t for f16 and bf16): exact for every dtype, one
// instantiation per size instead of per dtype. Zero padding is the all-zero pattern,
// +0.0 in all three dtypes.
#include <stdint.h>

#include "cuda_common.cuh"

// Run the statement with E bound to the unsigned integer type of dtype's size.
#define CUDA_DISPATCH_BITS(dtype, E, ...)   \
    if (cuda_dtype_size(dtype) == 4) {      \
        using E = uint32_t;                 \
        __VA_ARGS__;                        \
    } else {                                \
        using E = uint16_t;                 \
        __VA_ARGS__;                        \
    }

// Internal linkage for everything but the fill function: the other family files may use
// the same names for their own kernels and helpers.
namespace {

// ----------------------------------------------------------------- upsample ---

// x (P, H, W) -> out (P, 2H, 2W), P = B*C: each thread reads VEC neighbours of one input
// row and writes them doubled (2*VEC) into two output rows. With VEC > 1 the launcher
// has checked W % VEC == 0, so a run stays in one row and every access is aligned.
template <typename E, int VEC>
__global__ void upsample_nearest2x_kernel(const E *x, E *out, int64_t total, int64_t W) {
    int64_t i0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (i0 >= total)
        return;
    int64_t row = i0 / W, w0 = i0 - row * W; // row = p*H + h; out rows 2*row and 2*row + 1
    cuda_pack<E, VEC> in = ld_pack<VEC>(x, i0);
    cuda_pack<E, 2 * VEC> doubled;
#pragma unroll
    for (int k = 0; k < VEC; k++)
        doubled.v[2 * k] = doubled.v[2 * k + 1] = in.v[k];
    int64_t o = 2 * row * 2 * W + 2 * w0;
    st_pack<2 * VEC>(out, o, doubled);
    st_pack<2 * VEC>(out, o + 2 * W, doubled);
}

// x (B, C, H, W) -> out (B, C, 2H, 2W)
static sd_status cuda_upsample_nearest2x(const sd_backend *, const sd_tensor *x, sd_tensor *out) {
    const char *op = "upsample_nearest2x";
    SD_TRY(cuda_need_ndim(x, 4, op, "x"));
    SD_TRY(cuda_need(out, op, "out"));
    SD_TRY(cuda_need_dtype(x, out, op, "out"));
    sd_tensor expect = *x;
    expect.shape[2] *= 2;
    expect.shape[3] *= 2;
    SD_TRY(cuda_need_shape(&expect, out, op, "out"));
    int64_t total = cuda_numel(x), W = x->shape[3];
    CUDA_DISPATCH_BITS(x->dtype, E, {
        if (W % 4 == 0)
            upsample_nearest2x_kernel<E, 4><<<cuda_blocks(total / 4, 256), 256, 0,
                                              cuda_stream()>>>((const E *)x->data,
                                                               (E *)out->data, total, W);
        else
            upsample_nearest2x_kernel<E, 1><<<cuda_blocks(total, 256), 256, 0, cuda_stream()>>>(
                (const E *)x->data, (E *)out->data, total, W);
    });
    return cuda_launched("upsample_nearest2x_kernel");
}

// ----------------------------------------------------------------- concat -----

// a (B, Ca*S), b (B, Cb*S) -> out (B, (Ca+Cb)*S), VEC elements of out a thread. With
// VEC > 1 the launcher has checked that Ca*S and Cb*S are multiples of VEC, so a run comes
// from one source and every access is aligned.
template <typename E, int VEC>
__global__ void concat_channels_kernel(const E *a, const E *b, E *out, int64_t total,
                                       int64_t a_len, int64_t b_len) {
    int64_t i0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (i0 >= total)
        return;
    int64_t per = a_len + b_len, img = i0 / per, r = i0 - img * per;
    const E *src = r < a_len ? a + img * a_len + r : b + img * b_len + (r - a_len);
    st_pack<VEC>(out, i0, ld_pack<VEC>(src, 0));
}

// a (B, Ca, H, W), b (B, Cb, H, W) -> out (B, Ca + Cb, H, W)
static sd_status cuda_concat_channels(const sd_backend *, const sd_tensor *a, const sd_tensor *b,
                                      sd_tensor *out) {
    const char *op = "concat_channels";
    SD_TRY(cuda_need_ndim(a, 4, op, "a"));
    SD_TRY(cuda_need_ndim(b, 4, op, "b"));
    SD_TRY(cuda_need(out, op, "out"));
    SD_TRY(cuda_need_dtype(a, b, op, "b"));
    SD_TRY(cuda_need_dtype(a, out, op, "out"));
    if (a->shape[0] != b->shape[0] || a->shape[2] != b->shape[2] || a->shape[3] != b->shape[3])
        return g_host->fail(SD_ERR_INVALID, "concat_channels: 'a' and 'b' differ outside channels");
    sd_tensor expect = *a;
    expect.shape[1] += b->shape[1];
    SD_TRY(cuda_need_shape(&expect, out, op, "out"));
    int64_t S = a->shape[2] * a->shape[3], a_len = a->shape[1] * S, b_len = b->shape[1] * S;
    int64_t total = cuda_numel(out);
    CUDA_DISPATCH_BITS(a->dtype, E, {
        constexpr int V = cuda_pack16<E>();
        if (a_len % V == 0 && b_len % V == 0)
            concat_channels_kernel<E, V><<<cuda_blocks(total / V, 256), 256, 0, cuda_stream()>>>(
                (const E *)a->data, (const E *)b->data, (E *)out->data, total, a_len, b_len);
        else
            concat_channels_kernel<E, 1><<<cuda_blocks(total, 256), 256, 0, cuda_stream()>>>(
                (const E *)a->data, (const E *)b->data, (E *)out->data, total, a_len, b_len);
    });
    return cuda_launched("concat_channels_kernel");
}

// ----------------------------------------------------------------- transpose --

// x (batch, M, N) -> out (batch, N, M) through a 32x32 tile in shared memory: a warp reads
// 32 consecutive elements of a row of x and writes 32 consecutive elements of a row of
// out, so both sides are coalesced (a direct copy would stride one side by M or N
// elements). The +1 column keeps the column reads of the tile free of bank conflicts.
// Block (32, 8): each thread moves 4 elements. The grid's y and z are capped at 65535,
// so the block loops over the rest of the tile rows and batches.
#define TRANSPOSE_TILE 32
#define TRANSPOSE_ROWS 8

template <typename E>
__global__ void transpose_last2_kernel(const E *x, E *out, int64_t batch, int64_t M, int64_t N) {
    __shared__ E tile[TRANSPOSE_TILE][TRANSPOSE_TILE + 1];
    int64_t tiles_m = (M + TRANSPOSE_TILE - 1) / TRANSPOSE_TILE;
    int64_t n0 = (int64_t)blockIdx.x * TRANSPOSE_TILE;
    int tx = threadIdx.x, ty = threadIdx.y;
    for (int64_t bi = blockIdx.z; bi < batch; bi += gridDim.z) {
        const E *src = x + bi * M * N;
        E *dst = out + bi * M * N;
        for (int64_t tm = blockIdx.y; tm < tiles_m; tm += gridDim.y) {
            int64_t m0 = tm * TRANSPOSE_TILE;
#pragma unroll
            for (int r = ty; r < TRANSPOSE_TILE; r += TRANSPOSE_ROWS) {
                int64_t m = m0 + r, n = n0 + tx;
                if (m < M && n < N)
                    tile[r][tx] = src[m * N + n];
            }
            __syncthreads();
#pragma unroll
            for (int r = ty; r < TRANSPOSE_TILE; r += TRANSPOSE_ROWS) {
                int64_t n = n0 + r, m = m0 + tx;
                if (n < N && m < M)
                    dst[n * M + m] = tile[tx][r];
            }
            __syncthreads(); // the tile is refilled by the next iteration
        }
    }
}

// x (..., M, N) -> out (..., N, M)
static sd_status cuda_transpose_last2(const sd_backend *, const sd_tensor *x, sd_tensor *out) {
    const char *op = "transpose_last2";
    SD_TRY(cuda_need(x, op, "x"));
    SD_TRY(cuda_need(out, op, "out"));
    SD_TRY(cuda_need_dtype(x, out, op, "out"));
    if (x->ndim < 2)
        return g_host->fail(SD_ERR_INVALID,
                            "transpose_last2: argument 'x' must have at least 2 dims");
    int64_t M = x->shape[x->ndim - 2], N = x->shape[x->ndim - 1];
    sd_tensor expect = *x;
    expect.shape[x->ndim - 2] = N;
    expect.shape[x->ndim - 1] = M;
    SD_TRY(cuda_need_shape(&expect, out, op, "out"));
    if (x->data == out->data)
        return g_host->fail(SD_ERR_INVALID,
                            "transpose_last2: 'out' must not be 'x' (not in place)");
    int64_t batch = cuda_numel(x) / (M * N);
    int64_t tiles_m = (M + TRANSPOSE_TILE - 1) / TRANSPOSE_TILE;
    dim3 block(TRANSPOSE_TILE, TRANSPOSE_ROWS);
    dim3 grid((unsigned)((N + TRANSPOSE_TILE - 1) / TRANSPOSE_TILE),
              (unsigned)(tiles_m < 65535 ? tiles_m : 65535),
              (unsigned)(batch < 65535 ? batch : 65535));
    CUDA_DISPATCH_BITS(x->dtype, E,
                       transpose_last2_kernel<E><<<grid, block, 0, cuda_stream()>>>(
                           (const E *)x->data, (E *)out->data, batch, M, N));
    return cuda_launched("transpose_last2_kernel");
}

// ----------------------------------------------------------------- pad --------

// x (P, H, W) -> out (P, OH, OW) with zeros below row H and right of column W
template <typename E>
__global__ void pad_bottom_right_kernel(const E *x, E *out, int64_t total, int64_t H, int64_t W,
                                        int64_t OH, int64_t OW) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total)
        return;
    int64_t w = i % OW, h = i / OW % OH, p = i / (OW * OH);
    out[i] = h < H && w < W ? x[(p * H + h) * W + w] : (E)0;
}

// x (B, C, H, W) -> out (B, C, H + bottom, W + right)
static sd_status cuda_pad_bottom_right(const sd_backend *, const sd_tensor *x, int bottom,
                                       int right, sd_tensor *out) {
    const char *op = "pad_bottom_right";
    SD_TRY(cuda_need_ndim(x, 4, op, "x"));
    SD_TRY(cuda_need(out, op, "out"));
    SD_TRY(cuda_need_dtype(x, out, op, "out"));
    if (bottom < 0 || right < 0)
        return g_host->fail(SD_ERR_INVALID, "pad_bottom_right: padding must be >= 0");
    sd_tensor expect = *x;
    expect.shape[2] += bottom;
    expect.shape[3] += right;
    SD_TRY(cuda_need_shape(&expect, out, op, "out"));
    int64_t H = x->shape[2], W = x->shape[3], total = cuda_numel(out);
    CUDA_DISPATCH_BITS(x->dtype, E,
                       pad_bottom_right_kernel<E><<<cuda_blocks(total, 256), 256, 0,
                                                    cuda_stream()>>>(
                           (const E *)x->data, (E *)out->data, total, H, W, H + bottom,
                           W + right));
    return cuda_launched("pad_bottom_right_kernel");
}

// ----------------------------------------------------------------- timesteps --

// timesteps (N) -> out (N, dim), as cpu_timestep_embedding_f32 (diffusers'
// get_timestep_embedding, max_period 10000): freq_j = exp(-ln(10000) j / (half - shift)),
// [sin(t f), cos(t f)] or [cos, sin] with flip. Computed in double like the CPU: t f
// reaches 1000 radians, where f32 rounding of the argument alone moves sin by 6e-5. The
// op is N x dim/2 elements (2 x 160 in SD 1.5), so double's cost does not matter.
template <typename TS, typename TO>
__global__ void timestep_embedding_kernel(const TS *t, TO *out, int64_t N, int dim, int flip,
                                          double denom) {
    int half = dim / 2;
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N * half)
        return;
    int64_t n = i / half;
    int j = (int)(i - n * half);
    double freq = exp(-log(10000.0) * j / denom);
    double arg = (double)to_f32(t[n]) * freq;
    double s = sin(arg), c = cos(arg);
    TO *row = out + n * dim;
    row[j] = from_f32<TO>((float)(flip ? c : s));
    row[half + j] = from_f32<TO>((float)(flip ? s : c));
    if (dim % 2 && j == 0)
        row[dim - 1] = from_f32<TO>(0.0f); // an odd dim gets a zero last column
}

// timesteps (N) in any dtype -> out (N, dim) in out's dtype: the timesteps are an input
// of the model (f32 from the sampler), the embedding an activation.
static sd_status cuda_timestep_embedding(const sd_backend *, const sd_tensor *timesteps, int dim,
                                         int flip_sin_to_cos, float downscale_freq_shift,
                                         sd_tensor *out) {
    const char *op = "timestep_embedding";
    SD_TRY(cuda_need_ndim(timesteps, 1, op, "timesteps"));
    SD_TRY(cuda_need(out, op, "out"));
    if (dim < 2)
        return g_host->fail(SD_ERR_INVALID, "timestep_embedding: dim must be >= 2");
    double denom = (double)(dim / 2) - downscale_freq_shift;
    if ((double)dim / 2 - downscale_freq_shift <= 0.0)
        return g_host->fail(SD_ERR_INVALID, "timestep_embedding: downscale_freq_shift too large");
    int64_t N = timesteps->shape[0];
    if (out->ndim != 2 || out->shape[0] != N || out->shape[1] != dim)
        return g_host->fail(SD_ERR_INVALID,
                            "timestep_embedding: argument 'out' must be (%lld, %d)", (long long)N,
                            dim);
    int64_t total = N * (dim / 2);
    CUDA_DISPATCH(timesteps->dtype, TS,
                  CUDA_DISPATCH(out->dtype, TO,
                                timestep_embedding_kernel<TS, TO>
                                <<<cuda_blocks(total, 256), 256, 0, cuda_stream()>>>(
                                    (const TS *)timesteps->data, (TO *)out->data, N, dim,
                                    flip_sin_to_cos != 0, denom)));
    return cuda_launched("timestep_embedding_kernel");
}

// ----------------------------------------------------------------- embedding --

// out (n, C) = rows ids[i] of table (V, C), converted to out's dtype; ids already checked
template <typename TT, typename TO>
__global__ void embedding_kernel(const TT *table, const int32_t *ids, TO *out, int64_t n,
                                 int64_t C) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * C)
        return;
    int64_t r = i / C, c = i - r * C;
    out[i] = from_f32<TO>(to_f32(table[(int64_t)ids[r] * C + c]));
}

// table (V, C) any dtype, ids (n) in host memory -> out (n, C) in out's dtype.
//
// The ids live on the host (the tokenizer's output), so they are checked there, then
// uploaded with cudaMemcpyAsync on the op stream into the SCRATCH_CAST_B workspace, and the
// stream is synchronised before returning: the caller may reuse or free `ids` as soon as
// the op returns (with pinned memory the copy would otherwise still be reading it). That
// wait makes this op uncapturable in a CUDA graph, which is fine: it runs once per prompt
// in the text encoder, never inside the captured UNet step.
static sd_status cuda_embedding(const sd_backend *, const sd_tensor *table, const int32_t *ids,
                                int64_t n, sd_tensor *out) {
    const char *op = "embedding";
    SD_TRY(cuda_need_ndim(table, 2, op, "table"));
    SD_TRY(cuda_need(out, op, "out"));
    int64_t V = table->shape[0], C = table->shape[1];
    if (!ids || n < 1)
        return g_host->fail(SD_ERR_INVALID, "embedding: no ids");
    if (cuda_numel(out) != n * C || out->shape[out->ndim - 1] != C)
        return g_host->fail(SD_ERR_INVALID, "embedding: argument 'out' must hold (%lld, %lld)",
                            (long long)n, (long long)C);
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return g_host->fail(SD_ERR_INVALID,
                                "embedding: id %d at position %lld is outside [0, %lld)", ids[i],
                                (long long)i, (long long)V);
    void *dev_ids;
    size_t bytes = (size_t)n * sizeof(int32_t);
    SD_TRY(cuda_scratch(SCRATCH_CAST_B, bytes, &dev_ids));
    SD_TRY(cuda_check(cudaMemcpyAsync(dev_ids, ids, bytes, cudaMemcpyHostToDevice, cuda_stream()),
                      "embedding (cudaMemcpyAsync of the ids)"));
    int64_t total = n * C;
    CUDA_DISPATCH(table->dtype, TT,
                  CUDA_DISPATCH(out->dtype, TO,
                                embedding_kernel<TT, TO>
                                <<<cuda_blocks(total, 256), 256, 0, cuda_stream()>>>(
                                    (const TT *)table->data, (const int32_t *)dev_ids,
                                    (TO *)out->data, n, C)));
    SD_TRY(cuda_launched("embedding_kernel"));
    return cuda_check(cudaStreamSynchronize(cuda_stream()), "embedding (cudaStreamSynchronize)");
}

} // namespace

void cuda_fill_layout(sd_backend *be) {
    be->upsample_nearest2x = cuda_upsample_nearest2x;
    be->concat_channels = cuda_concat_channels;
    be->transpose_last2 = cuda_transpose_last2;
    be->pad_bottom_right = cuda_pad_bottom_right;
    be->timestep_embedding = cuda_timestep_embedding;
    be->embedding = cuda_embedding;
}

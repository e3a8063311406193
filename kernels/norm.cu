// group_norm (+SiLU), layer_norm and softmax on the CUDA backend.
//
// All three are memory-bound, so the kernels are about bytes: 16-byte loads and stores
// ("packs" of 4 f32 or 8 f16/bf16 elements) wherever the sizes and pointers allow, one
// element at a time otherwise, and statistics in f32 registers.
//
// GroupNorm over (B, C, S): group (b, g) is one contiguous span of n = C/groups * S
// elements. Its statistics are read once, then it is read again and written once
// normalised. Mean and variance come from per-pack moments (count, mean, sum of squared
// deviations) merged with Chan's formula: as accurate as two passes, in one read, and
// free of the cancellation of E[x^2] - E[x]^2 (a 40960-element f16 group with an
// offset of 3 would lose most of its variance in f32 that way). With few groups (64 at
// batch 2, fewer than the H100's 132 SMs) one block a group would leave most SMs idle,
// so each group's statistics are split over several blocks: a first kernel writes
// each block's moments, a second merges the group's and normalises the same slices.
//
// LayerNorm and softmax work on rows of the last dim. A row up to a few thousand
// elements stays in registers (a warp a row, or a block a row when longer): one read,
// exact two-pass statistics, one write. Longer rows fall back to a block a row that
// reads global memory once per pass.
#include "cuda_common.cuh"

// ----------------------------------------------------------------- packs ------

// Elements a 16-byte load moves.
template <typename T> constexpr int pack_width() { return 16 / (int)sizeof(T); }

// v = p[0..W): one 16-byte load when W is the full pack (p then 16-byte aligned).
// Plain loads, not __ldg: out may alias x (an op in place).
template <typename T, int W> __device__ __forceinline__ void load_pack(const T *p, float (&v)[W]) {
    if constexpr (W * sizeof(T) == 16) {
        uint4 raw = *reinterpret_cast<const uint4 *>(p);
        const T *e = reinterpret_cast<const T *>(&raw);
#pragma unroll
        for (int j = 0; j < W; j++)
            v[j] = to_f32(e[j]);
    } else {
#pragma unroll
        for (int j = 0; j < W; j++)
            v[j] = to_f32(p[j]);
    }
}

template <typename T, int W> __device__ __forceinline__ void store_pack(T *p, const float (&v)[W]) {
    if constexpr (W * sizeof(T) == 16) {
        uint4 raw;
        T *e = reinterpret_cast<T *>(&raw);
#pragma unroll
        for (int j = 0; j < W; j++)
            e[j] = from_f32<T>(v[j]);
        *reinterpret_cast<uint4 *>(p) = raw;
    } else {
#pragma unroll
        for (int j = 0; j < W; j++)
            p[j] = from_f32<T>(v[j]);
    }
}

// Whether x and out can be moved in whole packs of T: aligned, rows of `n` whole packs.
template <typename T> static bool packs_fit(const void *x, const void *out, int64_t n) {
    return n % pack_width<T>() == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)out % 16 == 0;
}

// gamma and beta, each in its own dtype (weights need not match the activations).
struct norm_affine {
    const void *gamma, *beta;
    sd_dtype gamma_dtype, beta_dtype;
};

__device__ __forceinline__ float ld_weight(const void *p, sd_dtype dt, int64_t i) {
    switch (dt) {
    case SD_F32:
        return ((const float *)p)[i];
    case SD_F16:
        return __half2float(((const __half *)p)[i]);
    default:
        return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    }
}

// W consecutive weights from index i; the dtype switch once per pack, not per element.
template <int W>
__device__ __forceinline__ void ld_weights(const void *p, sd_dtype dt, int64_t i, float (&w)[W]) {
    switch (dt) {
    case SD_F32:
#pragma unroll
        for (int j = 0; j < W; j++)
            w[j] = ((const float *)p)[i + j];
        break;
    case SD_F16:
#pragma unroll
        for (int j = 0; j < W; j++)
            w[j] = __half2float(((const __half *)p)[i + j]);
        break;
    default:
#pragma unroll
        for (int j = 0; j < W; j++)
            w[j] = __bfloat162float(((const __nv_bfloat16 *)p)[i + j]);
        break;
    }
}

__device__ __forceinline__ float silu_f32(float y) { return __fdividef(y, 1.0f + __expf(-y)); }

// ----------------------------------------------------------------- moments ----

// Count, mean and sum of squared deviations from the mean of a set of values.
struct moments {
    float n, mean, m2;
};

// The moments of the union of two sets (Chan et al.): exact up to rounding however
// far apart the two means are, unlike sums of squares.
__device__ __forceinline__ moments merge(moments a, moments b) {
    float n = a.n + b.n;
    if (n == 0.0f)
        return a;
    float wb = __fdividef(b.n, n);
    float d = b.mean - a.mean;
    return {n, a.mean + d * wb, a.m2 + b.m2 + d * d * a.n * wb};
}

// Lane 0 ends with the warp's merged moments. Merging is not commutative bit for bit,
// so a butterfly would leave lanes with slightly different results: reduce down instead.
__device__ __forceinline__ moments warp_merge(moments m) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        moments other = {__shfl_down_sync(0xffffffffu, m.n, o),
                         __shfl_down_sync(0xffffffffu, m.mean, o),
                         __shfl_down_sync(0xffffffffu, m.m2, o)};
        m = merge(m, other);
    }
    return m;
}

// The block's merged moments, in every thread (called once a kernel).
__device__ moments block_merge(moments m) {
    __shared__ moments per_warp[32], total;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    m = warp_merge(m);
    if (lane == 0)
        per_warp[warp] = m;
    __syncthreads();
    if (warp == 0) {
        m = lane < warps ? per_warp[lane] : moments{0.0f, 0.0f, 0.0f};
        m = warp_merge(m);
        if (lane == 0)
            total = m;
    }
    __syncthreads();
    return total;
}

// Moments of this thread's packs among packs [begin, end) of x, packs strided over the
// block. UNROLL packs are loaded before any arithmetic (loads in flight hide latency),
// their own moments taken exactly in registers, then merged: one division per
// UNROLL * W elements.
template <typename T, int W>
__device__ moments thread_moments(const T *x, int64_t begin, int64_t end) {
    constexpr int UNROLL = 4;
    moments m = {0.0f, 0.0f, 0.0f};
    for (int64_t p0 = begin + threadIdx.x; p0 < end; p0 += (int64_t)UNROLL * blockDim.x) {
        float v[UNROLL][W];
        int count = 0; // the valid packs are a prefix of the UNROLL
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            int64_t p = p0 + (int64_t)u * blockDim.x;
            if (p < end) {
                load_pack<T, W>(x + p * W, v[u]);
                count++;
            }
        }
        float s = 0.0f;
#pragma unroll
        for (int u = 0; u < UNROLL; u++)
            if (u < count)
#pragma unroll
                for (int j = 0; j < W; j++)
                    s += v[u][j];
        float n = (float)(count * W);
        float mean = s / n;
        float q = 0.0f;
#pragma unroll
        for (int u = 0; u < UNROLL; u++)
            if (u < count)
#pragma unroll
                for (int j = 0; j < W; j++) {
                    float d = v[u][j] - mean;
                    q += d * d;
                }
        m = merge(m, {n, mean, q});
    }
    return m;
}

// --------------------------------------------------------------- group norm ---

// One group's geometry, in packs of W elements.
struct group_shape {
    int64_t group_packs; // packs in a group: channels_per_group * S / W
    int64_t plane_packs; // packs in one channel: S / W (W divides S when W > 1)
    int channels_per_group, groups;
};

// out = (x - mean) * rstd * gamma[c] + beta[c], SiLU'd when asked, for packs
// [begin, end) of one group; x and out point at the group, channel c0 is its first.
// UNROLL packs are loaded before any is stored, so that many loads are in flight
// (the compiler may not hoist loads above stores itself: out may alias x).
template <typename T, int W>
__device__ void normalise_packs(const T *x, T *out, int64_t begin, int64_t end, group_shape gs,
                                int c0, float mean, float rstd, norm_affine a, bool silu) {
    constexpr int UNROLL = 4;
    // 32-bit division when it fits (it always does at image sizes): 64-bit is emulated
    bool small = gs.group_packs <= 0xffffffffLL;
    for (int64_t p0 = begin + threadIdx.x; p0 < end; p0 += (int64_t)UNROLL * blockDim.x) {
        float v[UNROLL][W];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            int64_t p = p0 + (int64_t)u * blockDim.x;
            if (p < end)
                load_pack<T, W>(x + p * W, v[u]);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            int64_t p = p0 + (int64_t)u * blockDim.x;
            if (p >= end)
                break;
            int64_t ch = small ? (int64_t)((uint32_t)p / (uint32_t)gs.plane_packs)
                               : p / gs.plane_packs;
            int c = c0 + (int)ch;
            float mul = rstd * ld_weight(a.gamma, a.gamma_dtype, c);
            float add = ld_weight(a.beta, a.beta_dtype, c) - mean * mul;
#pragma unroll
            for (int j = 0; j < W; j++) {
                float y = v[u][j] * mul + add;
                v[u][j] = silu ? silu_f32(y) : y;
            }
            store_pack<T, W>(out + p * W, v[u]);
        }
    }
}

// One block a group: statistics, then the normalisation of the same span (which the
// statistics pass has just brought into L2). blockIdx.x = b * groups + g.
template <typename T, int W>
__global__ void group_norm_kernel(const T *x, T *out, group_shape gs, float eps, norm_affine a,
                                  int silu) {
    int64_t bg = blockIdx.x;
    const T *xg = x + bg * gs.group_packs * W;
    moments m = thread_moments<T, W>(xg, 0, gs.group_packs);
    m = block_merge(m);
    float rstd = rsqrtf(m.m2 / m.n + eps);
    int c0 = (int)(bg % gs.groups) * gs.channels_per_group;
    normalise_packs<T, W>(xg, out + bg * gs.group_packs * W, 0, gs.group_packs, gs, c0, m.mean,
                          rstd, a, silu != 0);
}

// Per-slice moments of the split scheme, (group, slice) at [group * slices + slice].
// A fixed device array rather than a scratch workspace: its address never changes
// (safe inside a captured graph), and every op runs on the one stream, so no two
// group norms use it at once.
#define GROUP_NORM_MAX_PARTIALS 8192
__device__ float4 g_group_partials[GROUP_NORM_MAX_PARTIALS];

// Group blockIdx.x, slice blockIdx.y of gridDim.y: the slice's moments.
template <typename T, int W>
__global__ void group_norm_partial_kernel(const T *x, group_shape gs, int64_t slice_packs) {
    int64_t bg = blockIdx.x;
    int64_t begin = blockIdx.y * slice_packs;
    int64_t end = min(begin + slice_packs, gs.group_packs);
    moments m = thread_moments<T, W>(x + bg * gs.group_packs * W, begin, end);
    m = block_merge(m);
    if (threadIdx.x == 0)
        g_group_partials[bg * gridDim.y + blockIdx.y] = make_float4(m.n, m.mean, m.m2, 0.0f);
}

// Same grid: merge the group's slice moments (every block of the group in the same
// order, so all agree bit for bit), then normalise this block's slice.
template <typename T, int W>
__global__ void group_norm_apply_kernel(const T *x, T *out, group_shape gs, int64_t slice_packs,
                                        float eps, norm_affine a, int silu) {
    __shared__ float stats[2];
    int64_t bg = blockIdx.x;
    int slices = gridDim.y;
    if (threadIdx.x < 32) {
        moments m = {0.0f, 0.0f, 0.0f};
        for (int i = threadIdx.x; i < slices; i += 32) {
            float4 p = g_group_partials[bg * slices + i];
            m = merge(m, {p.x, p.y, p.z});
        }
        m = warp_merge(m);
        if (threadIdx.x == 0) {
            stats[0] = m.mean;
            stats[1] = rsqrtf(m.m2 / m.n + eps);
        }
    }
    __syncthreads();
    int64_t begin = blockIdx.y * slice_packs;
    int64_t end = min(begin + slice_packs, gs.group_packs);
    int c0 = (int)(bg % gs.groups) * gs.channels_per_group;
    normalise_packs<T, W>(x + bg * gs.group_packs * W, out + bg * gs.group_packs * W, begin, end,
                          gs, c0, stats[0], stats[1], a, silu != 0);
}

static int multiprocessor_count() {
    static int count = 0;
    if (count == 0) {
        int dev = 0, n = 0;
        if (cudaGetDevice(&dev) == cudaSuccess &&
            cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess &&
            n > 0)
            count = n;
        else {
            cudaGetLastError();
            count = 132; // an H100; only the split heuristic depends on it
        }
    }
    return count;
}

static const int GROUP_NORM_THREADS = 256;
// A slice below this many elements costs more in launch and merging than it saves.
static const int64_t GROUP_NORM_MIN_SLICE = 4096;
static const int GROUP_NORM_MAX_SLICES = 64;

// Slices per group: enough blocks for about four per SM, none smaller than the minimum.
static int group_norm_slices(int64_t groups_total, int64_t group_elems) {
    int64_t want = (4 * (int64_t)multiprocessor_count() + groups_total - 1) / groups_total;
    int64_t by_size = group_elems / GROUP_NORM_MIN_SLICE;
    int64_t s = want;
    if (s > by_size)
        s = by_size;
    if (s > GROUP_NORM_MAX_SLICES)
        s = GROUP_NORM_MAX_SLICES;
    return s < 1 ? 1 : (int)s;
}

// `slices` blocks a group: 1 runs group_norm_kernel, more the partial and apply pair.
template <typename T, int W>
static sd_status launch_group_norm(const T *x, T *out, int64_t groups_total, int64_t S, int cpg,
                                   int groups, float eps, norm_affine a, int silu, int slices) {
    group_shape gs = {(int64_t)cpg * S / W, S / W, cpg, groups};
    if (slices > GROUP_NORM_MAX_PARTIALS / groups_total) // never past the partials array
        slices = (int)(GROUP_NORM_MAX_PARTIALS / groups_total);
    if (slices <= 1) {
        group_norm_kernel<T, W><<<(unsigned)groups_total, GROUP_NORM_THREADS, 0, cuda_stream()>>>(
            x, out, gs, eps, a, silu);
        return cuda_launched("group_norm_kernel");
    }
    int64_t slice_packs = (gs.group_packs + slices - 1) / slices;
    slices = (int)((gs.group_packs + slice_packs - 1) / slice_packs); // none left empty
    dim3 grid((unsigned)groups_total, (unsigned)slices);
    group_norm_partial_kernel<T, W>
        <<<grid, GROUP_NORM_THREADS, 0, cuda_stream()>>>(x, gs, slice_packs);
    SD_TRY(cuda_launched("group_norm_partial_kernel"));
    group_norm_apply_kernel<T, W>
        <<<grid, GROUP_NORM_THREADS, 0, cuda_stream()>>>(x, out, gs, slice_packs, eps, a, silu);
    return cuda_launched("group_norm_apply_kernel");
}

static sd_status cuda_group_norm(const sd_backend *, const sd_tensor *x, const sd_tensor *gamma,
                                 const sd_tensor *beta, int groups, float eps, int fuse_silu,
                                 sd_tensor *out) {
    const char *op = "group_norm";
    SD_TRY(cuda_need(x, op, "x"));
    if (x->ndim < 2)
        return g_host->fail(SD_ERR_INVALID, "group_norm: argument 'x' must be (B, C, ...)");
    int64_t B = x->shape[0], C = x->shape[1], S = cuda_numel(x) / (B * C);
    if (groups < 1 || C % groups != 0)
        return g_host->fail(SD_ERR_INVALID,
                            "group_norm: %lld channels do not split into %d groups", (long long)C,
                            groups);
    if (!(eps >= 0.0f))
        return g_host->fail(SD_ERR_INVALID, "group_norm: eps must be >= 0");
    SD_TRY(cuda_need(out, op, "out"));
    SD_TRY(cuda_need_dtype(x, out, op, "out"));
    SD_TRY(cuda_need_shape(x, out, op, "out"));
    SD_TRY(cuda_need_vector(gamma, C, op, "gamma"));
    SD_TRY(cuda_need_vector(beta, C, op, "beta"));
    norm_affine a = {gamma->data, beta->data, gamma->dtype, beta->dtype};
    int cpg = (int)(C / groups);
    int64_t groups_total = B * groups;
    int slices = group_norm_slices(groups_total, (int64_t)cpg * S);
    // whole packs need every channel plane to be whole packs (a pack never straddles
    // two channels, whose gamma differ)
    CUDA_DISPATCH(x->dtype, T, {
        const T *xd = (const T *)x->data;
        T *od = (T *)out->data;
        if (packs_fit<T>(xd, od, S))
            return launch_group_norm<T, pack_width<T>()>(xd, od, groups_total, S, cpg, groups,
                                                         eps, a, fuse_silu, slices);
        return launch_group_norm<T, 1>(xd, od, groups_total, S, cpg, groups, eps, a, fuse_silu,
                                       slices);
    });
    return SD_OK;
}

// --------------------------------------------------------------- row ops ------

// Sum (or max) over the TPR threads that share a row, the same value in each of them:
// a warp (TPR 32) by butterfly, whose adds pair the same operands in every lane; a
// block (TPR = blockDim) through `shared` (32 floats), read back in one order by all.
template <int TPR, bool MAX> __device__ __forceinline__ float row_reduce(float v, float *shared) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = MAX ? fmaxf(v, w) : v + w;
    }
    if constexpr (TPR == 32) {
        return v;
    } else {
        __syncthreads(); // an earlier reduction may still be reading `shared`
        if ((threadIdx.x & 31) == 0)
            shared[threadIdx.x >> 5] = v;
        __syncthreads();
        v = shared[0];
#pragma unroll
        for (int i = 1; i < TPR / 32; i++)
            v = MAX ? fmaxf(v, shared[i]) : v + shared[i];
        return v;
    }
}

// Rows held in registers: each of a row's TPR threads holds NP packs of W elements,
// pack k of thread t being pack t + k * TPR of the row. TPR 32: a warp a row and
// ROW_WARPS rows a block; otherwise one block of TPR threads a row.
static const int ROW_WARPS = 4;

template <int TPR> __device__ __forceinline__ int64_t row_index() {
    if constexpr (TPR == 32)
        return (int64_t)blockIdx.x * ROW_WARPS + (threadIdx.x >> 5);
    else
        return blockIdx.x;
}

template <int TPR> __device__ __forceinline__ int row_thread() {
    return TPR == 32 ? (int)(threadIdx.x & 31) : (int)threadIdx.x;
}

template <typename T, int W, int NP, int TPR>
__global__ void __launch_bounds__(TPR == 32 ? 32 * ROW_WARPS : TPR)
    layer_norm_rows_kernel(const T *x, T *out, int64_t rows, int n, float eps, norm_affine a) {
    __shared__ float shared[32];
    int64_t row = row_index<TPR>();
    if (row >= rows) // whole warps only: TPR 32 rows are warp-uniform, block rows never
        return;
    int t = row_thread<TPR>(), packs = n / W;
    const T *xr = x + row * n;
    float v[NP][W];
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < NP; k++) {
        int p = t + k * TPR;
        if (p < packs) {
            load_pack<T, W>(xr + (int64_t)p * W, v[k]);
#pragma unroll
            for (int j = 0; j < W; j++)
                s += v[k][j];
        }
    }
    float mean = row_reduce<TPR, false>(s, shared) / (float)n;
    // the second pass is over registers: the exact two-pass variance costs no memory
    float q = 0.0f;
#pragma unroll
    for (int k = 0; k < NP; k++)
        if (t + k * TPR < packs)
#pragma unroll
            for (int j = 0; j < W; j++) {
                float d = v[k][j] - mean;
                q += d * d;
            }
    float rstd = rsqrtf(row_reduce<TPR, false>(q, shared) / (float)n + eps);
    T *orow = out + row * n;
#pragma unroll
    for (int k = 0; k < NP; k++) {
        int p = t + k * TPR;
        if (p < packs) {
            float g[W], b[W];
            ld_weights<W>(a.gamma, a.gamma_dtype, (int64_t)p * W, g);
            ld_weights<W>(a.beta, a.beta_dtype, (int64_t)p * W, b);
#pragma unroll
            for (int j = 0; j < W; j++)
                v[k][j] = (v[k][j] - mean) * rstd * g[j] + b[j];
            store_pack<T, W>(orow + (int64_t)p * W, v[k]);
        }
    }
}

template <typename T, int W, int NP, int TPR>
__global__ void __launch_bounds__(TPR == 32 ? 32 * ROW_WARPS : TPR)
    softmax_rows_kernel(const T *x, T *out, int64_t rows, int n) {
    __shared__ float shared[32];
    int64_t row = row_index<TPR>();
    if (row >= rows)
        return;
    int t = row_thread<TPR>(), packs = n / W;
    const T *xr = x + row * n;
    float v[NP][W];
    float mx = -INFINITY;
#pragma unroll
    for (int k = 0; k < NP; k++) {
        int p = t + k * TPR;
        if (p < packs) {
            load_pack<T, W>(xr + (int64_t)p * W, v[k]);
#pragma unroll
            for (int j = 0; j < W; j++)
                mx = fmaxf(mx, v[k][j]);
        }
    }
    // subtract the row max first: exp of large scores would overflow
    mx = row_reduce<TPR, true>(mx, shared);
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < NP; k++)
        if (t + k * TPR < packs)
#pragma unroll
            for (int j = 0; j < W; j++) {
                v[k][j] = __expf(v[k][j] - mx);
                s += v[k][j];
            }
    float inv = 1.0f / row_reduce<TPR, false>(s, shared);
    T *orow = out + row * n;
#pragma unroll
    for (int k = 0; k < NP; k++) {
        int p = t + k * TPR;
        if (p < packs) {
#pragma unroll
            for (int j = 0; j < W; j++)
                v[k][j] *= inv;
            store_pack<T, W>(orow + (int64_t)p * W, v[k]);
        }
    }
}

// Rows too long for registers: a block a row, reading x from global memory in each pass.
static const int LONG_ROW_THREADS = 512;

template <typename T>
__global__ void __launch_bounds__(LONG_ROW_THREADS)
    layer_norm_long_kernel(const T *x, T *out, int64_t n, float eps, norm_affine a) {
    __shared__ float shared[32];
    const T *xr = x + (int64_t)blockIdx.x * n;
    T *orow = out + (int64_t)blockIdx.x * n;
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += LONG_ROW_THREADS)
        s += ld_f32(xr, i);
    float mean = row_reduce<LONG_ROW_THREADS, false>(s, shared) / (float)n;
    float q = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += LONG_ROW_THREADS) {
        float d = ld_f32(xr, i) - mean;
        q += d * d;
    }
    float rstd = rsqrtf(row_reduce<LONG_ROW_THREADS, false>(q, shared) / (float)n + eps);
    for (int64_t i = threadIdx.x; i < n; i += LONG_ROW_THREADS) {
        float g = ld_weight(a.gamma, a.gamma_dtype, i), b = ld_weight(a.beta, a.beta_dtype, i);
        st_f32(orow, i, (ld_f32(xr, i) - mean) * rstd * g + b);
    }
}

template <typename T>
__global__ void __launch_bounds__(LONG_ROW_THREADS)
    softmax_long_kernel(const T *x, T *out, int64_t n) {
    __shared__ float shared[32];
    const T *xr = x + (int64_t)blockIdx.x * n;
    T *orow = out + (int64_t)blockIdx.x * n;
    // running max and sum of exp(x - max) per thread, rescaled when the max grows
    float mx = -INFINITY, s = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += LONG_ROW_THREADS) {
        float v = ld_f32(xr, i);
        if (v > mx) {
            s = s * __expf(mx - v) + 1.0f;
            mx = v;
        } else if (mx != -INFINITY) { // else v is -inf too and adds 0
            s += __expf(v - mx);
        }
    }
    float row_max = row_reduce<LONG_ROW_THREADS, true>(mx, shared);
    s = mx == -INFINITY ? 0.0f : s * __expf(mx - row_max); // a thread with no elements adds 0
    float inv = 1.0f / row_reduce<LONG_ROW_THREADS, false>(s, shared);
    for (int64_t i = threadIdx.x; i < n; i += LONG_ROW_THREADS)
        st_f32(orow, i, __expf(ld_f32(xr, i) - row_max) * inv);
}

// Which row kernel: a warp a row while a row fits in 8 packs a lane, then a block of
// ROW_BLOCK threads a row up to 8 packs a thread, else the long-row kernel.
static const int ROW_BLOCK = 512;
static const int ROW_MAX_PACKS = 8;

struct row_plan {
    int tpr; // threads a row: 32, ROW_BLOCK, or 0 for the long-row kernel
    int np;  // packs a thread: 1, 2, 4 or 8
};

static row_plan plan_rows(int64_t packs) {
    for (int tpr : {32, ROW_BLOCK})
        for (int np = 1; np <= ROW_MAX_PACKS; np *= 2)
            if (packs <= (int64_t)tpr * np)
                return {tpr, np};
    return {0, 0};
}

static dim3 row_grid(int64_t rows, const row_plan &plan) {
    return dim3(plan.tpr == 32 ? cuda_blocks(rows, ROW_WARPS) : (unsigned)rows);
}

static dim3 row_threads(const row_plan &plan) {
    return dim3(plan.tpr == 32 ? 32 * ROW_WARPS : ROW_BLOCK);
}

// The instance of a row kernel for a plan: KERNEL<T, W, np, tpr>.
#define ROW_KERNEL_FOR(KERNEL, T, W, plan)                                                     \
    ((plan).tpr == 32 ? ((plan).np == 1   ? KERNEL<T, W, 1, 32>                               \
                         : (plan).np == 2 ? KERNEL<T, W, 2, 32>                               \
                         : (plan).np == 4 ? KERNEL<T, W, 4, 32>                               \
                                          : KERNEL<T, W, 8, 32>)                              \
                      : ((plan).np == 1   ? KERNEL<T, W, 1, ROW_BLOCK>                        \
                         : (plan).np == 2 ? KERNEL<T, W, 2, ROW_BLOCK>                        \
                         : (plan).np == 4 ? KERNEL<T, W, 4, ROW_BLOCK>                        \
                                          : KERNEL<T, W, 8, ROW_BLOCK>))

template <typename T, int W>
static sd_status launch_layer_norm(const T *x, T *out, int64_t rows, int64_t n, float eps,
                                   norm_affine a) {
    row_plan plan = plan_rows(n / W);
    if (plan.tpr == 0) {
        layer_norm_long_kernel<T>
            <<<(unsigned)rows, LONG_ROW_THREADS, 0, cuda_stream()>>>(x, out, n, eps, a);
        return cuda_launched("layer_norm_long_kernel");
    }
    auto kernel = ROW_KERNEL_FOR(layer_norm_rows_kernel, T, W, plan);
    kernel<<<row_grid(rows, plan), row_threads(plan), 0, cuda_stream()>>>(x, out, rows, (int)n,
                                                                           eps, a);
    return cuda_launched("layer_norm_rows_kernel");
}

template <typename T, int W>
static sd_status launch_softmax(const T *x, T *out, int64_t rows, int64_t n) {
    row_plan plan = plan_rows(n / W);
    if (plan.tpr == 0) {
        softmax_long_kernel<T><<<(unsigned)rows, LONG_ROW_THREADS, 0, cuda_stream()>>>(x, out, n);
        return cuda_launched("softmax_long_kernel");
    }
    auto kernel = ROW_KERNEL_FOR(softmax_rows_kernel, T, W, plan);
    kernel<<<row_grid(rows, plan), row_threads(plan), 0, cuda_stream()>>>(x, out, rows, (int)n);
    return cuda_launched("softmax_rows_kernel");
}

// A grid of one block a row: gridDim.x is limited to 2^31 - 1.
static sd_status need_rows(int64_t rows, const char *op) {
    if (rows > 0x7fffffffLL)
        return g_host->fail(SD_ERR_INVALID, "%s: %lld rows are more than one launch takes", op,
                            (long long)rows);
    return SD_OK;
}

static sd_status cuda_layer_norm(const sd_backend *, const sd_tensor *x, const sd_tensor *gamma,
                                 const sd_tensor *beta, float eps, sd_tensor *out) {
    const char *op = "layer_norm";
    SD_TRY(cuda_need(x, op, "x"));
    SD_TRY(cuda_need(out, op, "out"));
    SD_TRY(cuda_need_dtype(x, out, op, "out"));
    SD_TRY(cuda_need_shape(x, out, op, "out"));
    if (!(eps >= 0.0f))
        return g_host->fail(SD_ERR_INVALID, "layer_norm: eps must be >= 0");
    int64_t C = x->shape[x->ndim - 1], rows = cuda_numel(x) / C;
    SD_TRY(cuda_need_vector(gamma, C, op, "gamma"));
    SD_TRY(cuda_need_vector(beta, C, op, "beta"));
    SD_TRY(need_rows(rows, op));
    norm_affine a = {gamma->data, beta->data, gamma->dtype, beta->dtype};
    CUDA_DISPATCH(x->dtype, T, {
        const T *xd = (const T *)x->data;
        T *od = (T *)out->data;
        if (packs_fit<T>(xd, od, C))
            return launch_layer_norm<T, pack_width<T>()>(xd, od, rows, C, eps, a);
        return launch_layer_norm<T, 1>(xd, od, rows, C, eps, a);
    });
    return SD_OK;
}

static sd_status cuda_softmax(const sd_backend *, const sd_tensor *x, sd_tensor *out) {
    const char *op = "softmax";
    SD_TRY(cuda_need(x, op, "x"));
    SD_TRY(cuda_need(out, op, "out"));
    SD_TRY(cuda_need_dtype(x, out, op, "out"));
    SD_TRY(cuda_need_shape(x, out, op, "out"));
    int64_t N = x->shape[x->ndim - 1], rows = cuda_numel(x) / N;
    SD_TRY(need_rows(rows, op));
    CUDA_DISPATCH(x->dtype, T, {
        const T *xd = (const T *)x->data;
        T *od = (T *)out->data;
        if (packs_fit<T>(xd, od, N))
            return launch_softmax<T, pack_width<T>()>(xd, od, rows, N);
        return launch_softmax<T, 1>(xd, od, rows, N);
    });
    return SD_OK;
}

void cuda_fill_norm(sd_backend *be) {
    be->group_norm = cuda_group_norm;
    be->layer_norm = cuda_layer_norm;
    be->softmax = cuda_softmax;
}

// attention on the CUDA backend.
//
// q (B, Tq, H*D), k and v (B, Tk, H*D) -> out (B, Tq, H*D), heads packed in the last dim
// (head h is columns h*D .. h*D + D - 1); out = softmax(q k^T / sqrt(D)) v per (batch,
// head), with an optional causal mask (key j > query i). Two paths:
// - f16/bf16 with D % 8 == 0 and 32 < D <= 160 (SD's 40, 64, 80 and 160): one fused
//   flash-attention kernel on tensor cores; the (Tq, Tk) scores never reach memory.
// - everything else (f32 staging, the VAE's single 512-dim head, small heads): scores
//   S = Q K^T by cuBLAS into f32 scratch, a softmax kernel over rows, then P V by cuBLAS.
// kernels/dev/attention.cu checks and times both against a CPU reference and a naive kernel.
#include "cuda_common.cuh"
#include "ptx.cuh"

// File-local, like the static functions: another op file may name its helpers alike.
namespace {

// ----------------------------------------------------------------- flash ------

#define FLASH_WARPS 4
#define FLASH_BQ (16 * FLASH_WARPS) // queries per CTA: 16 rows of m16n8k16 per warp

// Shared-memory rows are DP + 8 elements: the 16 extra bytes shift consecutive rows by
// four banks, so the eight rows a fragment load touches hit 32 different banks.
template <int DP> struct flash_layout {
    static constexpr int row = DP + 8;
};

// rows x DP tile of a (T, H*D) operand into shared memory: rows past `valid_rows` and
// columns past D are zero-filled, which is the padding of D up to DP (D % 8 == 0).
// With DATA_ONLY (D = DP - 8), the last chunk of each row, past D, is left alone (filled
// once by flash_fill_padding). The chunk count is a compile-time constant, so the index
// arithmetic is multiplies and shifts, not a division in every tile.
template <typename T, int ROWS, int DP, bool DATA_ONLY = false>
__device__ __forceinline__ void flash_load_tile(T *smem, const T *g, int64_t ld, int valid_rows,
                                                int D) {
    constexpr int chunks = DATA_ONLY ? DP / 8 - 1 : DP / 8; // 16-byte chunks a row
    constexpr int threads = FLASH_WARPS * 32;
    constexpr int rounds = (ROWS * chunks + threads - 1) / threads;
#pragma unroll
    for (int u = 0; u < rounds; u++) {
        int i = threadIdx.x + u * threads;
        if (ROWS * chunks % threads != 0 && i >= ROWS * chunks)
            break;
        int r = i / chunks, c = i % chunks;
        bool ok = r < valid_rows && c * 8 < D;
        cp_async16(smem + r * flash_layout<DP>::row + c * 8, ok ? g + r * ld + c * 8 : g,
                   ok ? 16 : 0);
    }
}

// The padding columns DP - 8 .. DP - 1 of every row of `rows` rows: zero, but for the
// first, which is `first` (1 in V: P V then carries each row's sum of P in that column).
template <typename T, int DP>
__device__ __forceinline__ void flash_fill_padding(T *smem, int rows, float first) {
    for (int i = threadIdx.x; i < rows * 8; i += FLASH_WARPS * 32) {
        int r = i / 8, c = i % 8;
        smem[r * flash_layout<DP>::row + DP - 8 + c] = from_f32<T>(c == 0 ? first : 0.0f);
    }
}

// One CTA: FLASH_BQ queries of one (b, h) against all keys, KB keys at a time.
// grid (ceil(Tq / FLASH_BQ), B * H), FLASH_WARPS * 32 threads; each warp owns 16 rows.
// Fragment naming follows the PTX manual: g = lane / 4 picks the row (and g + 8),
// t = lane % 4 the column pair 2t, 2t + 1.
//
// SUM_IN_V (D = DP - 8, i.e. D % 16 == 8, SD 1.5's 40): the padding column D of V is all
// ones, so the P V product accumulates each row's softmax denominator in output column D,
// rescaled with the rest, and the sum of P costs no ALU work. For small heads the ALU
// work per score (FFMA, max, exponential, conversion), not the tensor cores, sets the
// pace. Otherwise each thread sums its P values and the quad reduces them at the end.
template <typename T, int DP, int KB, bool SUM_IN_V>
__global__ void __launch_bounds__(FLASH_WARPS * 32)
    attention_flash_kernel(const T *q, const T *k, const T *v, T *out, int Tq, int Tk, int H,
                           int D, float scale_log2, int causal) {
    using mma_t = mma_traits<T>;
    constexpr int RS = flash_layout<DP>::row;
    extern __shared__ __align__(16) unsigned char flash_smem[];
    T *q_s = reinterpret_cast<T *>(flash_smem);   // (BQ, RS)
    T *k_s = q_s + FLASH_BQ * RS;                  // 2 x (KB, RS)
    T *v_s = k_s + 2 * KB * RS;                    // 2 x (KB, RS)

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    // causal blocks late in the sequence have the most keys: start those first
    const int qb = causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
    const int b = blockIdx.y / H, h = blockIdx.y % H;
    const int q0 = qb * FLASH_BQ;
    const int64_t ld = (int64_t)H * D;
    const T *qg = q + ((int64_t)b * Tq + q0) * ld + (int64_t)h * D;
    const T *kg = k + (int64_t)b * Tk * ld + (int64_t)h * D;
    const T *vg = v + (int64_t)b * Tk * ld + (int64_t)h * D;
    // with a causal mask no query of this block sees a key past its last query
    const int keys = causal ? min(Tk, q0 + FLASH_BQ) : Tk;
    const int tiles = (keys + KB - 1) / KB;

    if (SUM_IN_V) {
        // K's padding is zero (0 * Q's zero padding stays 0); V's carries the ones column.
        // Plain stores, never touched by the cp.async loads below (data_only).
        flash_fill_padding<T, DP>(k_s, 2 * KB, 0.0f);
        flash_fill_padding<T, DP>(v_s, 2 * KB, 1.0f);
    }
    flash_load_tile<T, FLASH_BQ, DP>(q_s, qg, ld, min(FLASH_BQ, Tq - q0), D);
    flash_load_tile<T, KB, DP, SUM_IN_V>(k_s, kg, ld, min(KB, Tk), D);
    flash_load_tile<T, KB, DP, SUM_IN_V>(v_s, vg, ld, min(KB, Tk), D);
    cp_async_commit();

    uint32_t q_frag[DP / 16][4];
    float o[DP / 8][4];
#pragma unroll
    for (int n = 0; n < DP / 8; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    // per thread: rows g and g + 8 of the warp's 16, maxima in raw score units; the sums
    // (without SUM_IN_V) are partial over the thread's columns, reduced at the end
    float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
    const int row0 = q0 + warp * 16 + g; // query index of the thread's first row

    for (int j = 0; j < tiles; j++) {
        const int cur = j & 1, k0 = j * KB;
        if (j + 1 < tiles) {
            // the buffer being filled was last read in iteration j - 1, before its barrier
            int next = k0 + KB;
            flash_load_tile<T, KB, DP, SUM_IN_V>(k_s + (cur ^ 1) * KB * RS, kg + next * ld, ld,
                                                 min(KB, Tk - next), D);
            flash_load_tile<T, KB, DP, SUM_IN_V>(v_s + (cur ^ 1) * KB * RS, vg + next * ld, ld,
                                                 min(KB, Tk - next), D);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (j == 0) {
            const T *qr = q_s + (warp * 16 + g) * RS + 2 * t;
#pragma unroll
            for (int kk = 0; kk < DP / 16; kk++) {
                q_frag[kk][0] = *reinterpret_cast<const uint32_t *>(qr + kk * 16);
                q_frag[kk][1] = *reinterpret_cast<const uint32_t *>(qr + 8 * RS + kk * 16);
                q_frag[kk][2] = *reinterpret_cast<const uint32_t *>(qr + kk * 16 + 8);
                q_frag[kk][3] = *reinterpret_cast<const uint32_t *>(qr + 8 * RS + kk * 16 + 8);
            }
        }
        const T *kt = k_s + cur * KB * RS;
        const T *vt = v_s + cur * KB * RS;

        // S (16, KB) = Q K^T for this warp's rows; K stored (key, d) is B col-major. One
        // ldmatrix brings the B fragments of two key tiles for one k16 step: lanes 0-15
        // address the rows of tile n (d 0-7, then 8-15), lanes 16-31 those of tile n + 1.
        float s[KB / 8][4];
#pragma unroll
        for (int n = 0; n < KB / 8; n++)
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
        const T *kr = kt + (((lane >> 4) * 8) + (lane & 7)) * RS + ((lane >> 3) & 1) * 8;
#pragma unroll
        for (int n = 0; n < KB / 8; n += 2) {
#pragma unroll
            for (int kk = 0; kk < DP / 16; kk++) {
                uint32_t kb[4];
                ldmatrix_x4(kb, kr + n * 8 * RS + kk * 16);
                mma_t::mma(s[n], q_frag[kk], kb[0], kb[1]);
                mma_t::mma(s[n + 1], q_frag[kk], kb[2], kb[3]);
            }
        }

        // mask keys past Tk and, causal, past the query: only the last tile (and, causal,
        // the diagonal ones) need it, and they take a branch of their own
        const bool edge = k0 + KB > Tk || (causal && k0 + KB - 1 > q0 + warp * 16);
        if (edge) {
#pragma unroll
            for (int n = 0; n < KB / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int key = k0 + n * 8 + 2 * t + (e & 1), row = row0 + (e >> 1) * 8;
                    if (key >= Tk || (causal && key > row))
                        s[n][e] = -INFINITY;
                }
        }
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < KB / 8; n++) {
            tile_max[0] = fmaxf(tile_max[0], fmaxf(s[n][0], s[n][1]));
            tile_max[1] = fmaxf(tile_max[1], fmaxf(s[n][2], s[n][3]));
        }
        // online softmax: p = 2^(s * scale_log2 - m * scale_log2), one FFMA a score;
        // what was accumulated under the old maximum is rescaled by alpha
        uint32_t p[KB / 8][2]; // P packed in T, rows g and g + 8
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float m = tile_max[r];
            m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
            m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
            float m_new = fmaxf(row_max[r], m);
            // a row with no key yet keeps -inf: subtract 0 so exp2 gives 0, not NaN
            float m_use = m_new == -INFINITY ? 0.0f : m_new * scale_log2;
            float alpha = fast_exp2(row_max[r] * scale_log2 - m_use);
            row_max[r] = m_new;
            row_sum[r] *= alpha;
#pragma unroll
            for (int n = 0; n < DP / 8; n++) {
                o[n][2 * r] *= alpha;
                o[n][2 * r + 1] *= alpha;
            }
#pragma unroll
            for (int n = 0; n < KB / 8; n++) {
                float p0 = fast_exp2(fmaf(s[n][2 * r], scale_log2, -m_use));
                float p1 = fast_exp2(fmaf(s[n][2 * r + 1], scale_log2, -m_use));
                p[n][r] = mma_t::pack(p0, p1);
                if (!SUM_IN_V)
                    row_sum[r] += p0 + p1;
            }
        }

        // O (16, DP) += P (16, KB) V (KB, DP): the P fragments of two adjacent key tiles
        // are the A fragment of one k16 step; V comes in by transposing ldmatrix
#pragma unroll
        for (int kk = 0; kk < KB / 16; kk++) {
            uint32_t a[4] = {p[2 * kk][0], p[2 * kk][1], p[2 * kk + 1][0], p[2 * kk + 1][1]};
            const T *vr = vt + (kk * 16 + (lane & 15)) * RS + (lane >> 4) * 8;
#pragma unroll
            for (int dn = 0; dn < DP / 16; dn++) {
                uint32_t bv[4];
                ldmatrix_x4_trans(bv, vr + dn * 16);
                mma_t::mma(o[2 * dn], a, bv[0], bv[1]);
                mma_t::mma(o[2 * dn + 1], a, bv[2], bv[3]);
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        float l;
        if (SUM_IN_V) {
            // column D = DP - 8 is n = DP / 8 - 1, pair element 0, held by the quad's t == 0
            l = __shfl_sync(0xffffffffu, o[DP / 8 - 1][2 * r], lane & ~3);
        } else {
            l = row_sum[r];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
        }
        int row = row0 + r * 8;
        if (row >= Tq)
            continue;
        float inv = 1.0f / l;
        T *orow = out + ((int64_t)b * Tq + row) * ld + (int64_t)h * D;
#pragma unroll
        for (int n = 0; n < DP / 8; n++) {
            int col = n * 8 + 2 * t;
            if (col < D)
                *reinterpret_cast<uint32_t *>(orow + col) =
                    mma_t::pack(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
        }
    }
}

template <typename T, int DP, int KB, bool SUM_IN_V>
static sd_status launch_flash_kernel(const T *q, const T *k, const T *v, T *out, int B, int Tq,
                                     int Tk, int H, int D, int causal) {
    size_t smem = (size_t)(FLASH_BQ + 4 * KB) * flash_layout<DP>::row * sizeof(T);
    // Above 48 KiB of shared memory a kernel must opt in. A function attribute, not stream
    // work: set once, on the first (warm-up) call, it leaves graph capture alone.
    static bool opted_in = false;
    if (!opted_in) {
        SD_TRY(cuda_check(cudaFuncSetAttribute(attention_flash_kernel<T, DP, KB, SUM_IN_V>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               (int)smem),
                          "cudaFuncSetAttribute (attention_flash_kernel)"));
        opted_in = true;
    }
    dim3 grid((unsigned)((Tq + FLASH_BQ - 1) / FLASH_BQ), (unsigned)(B * H));
    float scale_log2 = 1.4426950408889634f / sqrtf((float)D); // log2(e) / sqrt(D)
    attention_flash_kernel<T, DP, KB, SUM_IN_V>
        <<<grid, FLASH_WARPS * 32, smem, cuda_stream()>>>(q, k, v, out, Tq, Tk, H, D,
                                                         scale_log2, causal);
    return cuda_launched("attention_flash_kernel");
}

// The padding of D up to DP, when there is any, carries the softmax sums.
template <typename T, int DP, int KB>
static sd_status launch_flash_dp(const T *q, const T *k, const T *v, T *out, int B, int Tq,
                                 int Tk, int H, int D, int causal) {
    if (D == DP - 8)
        return launch_flash_kernel<T, DP, KB, true>(q, k, v, out, B, Tq, Tk, H, D, causal);
    return launch_flash_kernel<T, DP, KB, false>(q, k, v, out, B, Tq, Tk, H, D, causal);
}

// D is padded up to the next multiple of 16 (128 for 112). 64-key tiles up to DP 80;
// above, 32 keep S, O and Q in registers without spilling.
template <typename T>
static sd_status launch_flash(const T *q, const T *k, const T *v, T *out, int B, int Tq, int Tk,
                              int H, int D, int causal) {
    switch ((D + 15) / 16 * 16) {
    case 48: return launch_flash_dp<T, 48, 64>(q, k, v, out, B, Tq, Tk, H, D, causal);
    case 64: return launch_flash_dp<T, 64, 64>(q, k, v, out, B, Tq, Tk, H, D, causal);
    case 80: return launch_flash_dp<T, 80, 64>(q, k, v, out, B, Tq, Tk, H, D, causal);
    case 96: return launch_flash_dp<T, 96, 32>(q, k, v, out, B, Tq, Tk, H, D, causal);
    case 112:
    case 128: return launch_flash_dp<T, 128, 32>(q, k, v, out, B, Tq, Tk, H, D, causal);
    default: return launch_flash_dp<T, 160, 32>(q, k, v, out, B, Tq, Tk, H, D, causal);
    }
}

// The fused kernel reads 16-byte chunks of each head (so D % 8 == 0 and 16-byte aligned
// tensors), keeps up to 160 dims in registers, and needs B * H within grid.y's limit.
static bool flash_fits(const sd_tensor *q, const sd_tensor *k, const sd_tensor *v,
                       const sd_tensor *out, int64_t B, int64_t H, int64_t D) {
    if (q->dtype == SD_F32 || D % 8 != 0 || D <= 32 || D > 160 || B * H > 65535)
        return false;
    uintptr_t addresses = (uintptr_t)q->data | (uintptr_t)k->data | (uintptr_t)v->data |
                          (uintptr_t)out->data;
    return addresses % 16 == 0;
}

// ----------------------------------------------------------------- general ----

// One block a row of S (f32): p = softmax(s * scale) in T, keys past a causal limit 0.
// rows_per_batch rows per batch entry, the first being query q0.
template <typename T>
__global__ void attention_softmax_rows_kernel(const float *s, T *p, int rows_per_batch, int Tk,
                                              int q0, float scale, int causal) {
    __shared__ float red[32];
    int64_t row = blockIdx.x;
    int query = q0 + (int)(row % rows_per_batch);
    int valid = causal ? min(Tk, query + 1) : Tk;
    const float *sr = s + row * Tk;
    T *pr = p + row * Tk;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;

    float mx = -INFINITY;
    for (int j = threadIdx.x; j < valid; j += blockDim.x)
        mx = fmaxf(mx, sr[j]);
    for (int o = 16; o > 0; o /= 2)
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0)
        red[warp] = mx;
    __syncthreads();
    mx = red[0];
    for (int w = 1; w < warps; w++)
        mx = fmaxf(mx, red[w]);
    __syncthreads();

    float sum = 0.0f;
    for (int j = threadIdx.x; j < valid; j += blockDim.x)
        sum += expf((sr[j] - mx) * scale);
    for (int o = 16; o > 0; o /= 2)
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0)
        red[warp] = sum;
    __syncthreads();
    sum = 0.0f;
    for (int w = 0; w < warps; w++)
        sum += red[w];
    float inv = 1.0f / sum;
    // each thread writes only the elements it reads: p may alias s when T is float
    for (int j = threadIdx.x; j < Tk; j += blockDim.x)
        pr[j] = from_f32<T>(j < valid ? expf((sr[j] - mx) * scale) * inv : 0.0f);
}

} // namespace

// Scores of one head for a chunk of queries stay within this (f32 S plus P in T).
static const size_t SCORES_BYTES = 32u << 20;

// Per head, batched over B, in query chunks: S (qc, Tk) = Q_h K_h^T in f32, P = softmax
// rows in the activation dtype (in place over S for f32), out_h = P V_h.
static sd_status attention_unfused(const sd_tensor *q, const sd_tensor *k, const sd_tensor *v,
                                   sd_tensor *out, int64_t B, int64_t Tq, int64_t Tk, int64_t H,
                                   int64_t D, int causal) {
    sd_dtype dt = q->dtype;
    size_t es = cuda_dtype_size(dt);
    size_t per_score = sizeof(float) + (dt == SD_F32 ? 0 : es);
    int64_t chunk = (int64_t)(SCORES_BYTES / (per_score * (size_t)(B * Tk)));
    chunk = chunk < 1 ? 1 : chunk > Tq ? Tq : chunk;
    void *buf;
    SD_TRY(cuda_scratch(SCRATCH_ATTENTION, per_score * (size_t)(B * chunk * Tk), &buf));
    float *s = (float *)buf;
    void *p = dt == SD_F32 ? buf : (void *)(s + B * chunk * Tk);
    const char *qd = (const char *)q->data, *kd = (const char *)k->data;
    const char *vd = (const char *)v->data;
    char *od = (char *)out->data;
    int64_t ld = H * D;
    float scale = 1.0f / sqrtf((float)D);
    for (int64_t h = 0; h < H; h++)
        for (int64_t q0 = 0; q0 < Tq; q0 += chunk) {
            int64_t qc = Tq - q0 < chunk ? Tq - q0 : chunk;
            // S_b (qc, Tk) = Q_b[q0 .. q0 + qc, head h] @ K_b[:, head h]^T
            SD_TRY(cuda_gemm(true, qc, Tk, D, qd + (q0 * ld + h * D) * es, ld, Tq * ld,
                             kd + h * D * es, ld, Tk * ld, s, Tk, qc * Tk, B, dt, SD_F32,
                             false));
            CUDA_DISPATCH(dt, T,
                          attention_softmax_rows_kernel<T>
                          <<<(unsigned)(B * qc), 128, 0, cuda_stream()>>>(
                              s, (T *)p, (int)qc, (int)Tk, (int)q0, scale, causal));
            SD_TRY(cuda_launched("attention_softmax_rows_kernel"));
            // out_b[q0 .. q0 + qc, head h] = P_b (qc, Tk) @ V_b[:, head h]
            SD_TRY(cuda_gemm(false, qc, D, Tk, p, Tk, qc * Tk, vd + h * D * es, ld, Tk * ld,
                             od + (q0 * ld + h * D) * es, ld, Tq * ld, B, dt, dt, false));
        }
    return SD_OK;
}

// ----------------------------------------------------------------- op ---------

// q (B, Tq, H*D), k and v (B, Tk, H*D) -> out (B, Tq, H*D)
static sd_status cuda_attention(const sd_backend *, const sd_tensor *q, const sd_tensor *k,
                                const sd_tensor *v, int heads, int causal, sd_tensor *out) {
    const char *op = "attention";
    SD_TRY(cuda_need_ndim(q, 3, op, "q"));
    SD_TRY(cuda_need_ndim(k, 3, op, "k"));
    SD_TRY(cuda_need(v, op, "v"));
    SD_TRY(cuda_need(out, op, "out"));
    SD_TRY(cuda_need_dtype(q, k, op, "k"));
    SD_TRY(cuda_need_dtype(q, v, op, "v"));
    SD_TRY(cuda_need_dtype(q, out, op, "out"));
    SD_TRY(cuda_need_shape(k, v, op, "v"));
    SD_TRY(cuda_need_shape(q, out, op, "out"));
    int64_t B = q->shape[0], Tq = q->shape[1], HD = q->shape[2], Tk = k->shape[1];
    if (k->shape[0] != B || k->shape[2] != HD)
        return g_host->fail(SD_ERR_INVALID, "attention: argument 'k' must be (%lld, Tk, %lld)",
                            (long long)B, (long long)HD);
    if (heads < 1 || HD % heads != 0)
        return g_host->fail(SD_ERR_INVALID, "attention: width %lld does not split into %d heads",
                            (long long)HD, heads);
    if (causal && Tq != Tk)
        return g_host->fail(SD_ERR_INVALID,
                            "attention: a causal mask needs as many keys as queries");
    // the kernels index rows and keys with int
    if (Tq > INT32_MAX || Tk > INT32_MAX || HD > INT32_MAX)
        return g_host->fail(SD_ERR_UNSUPPORTED, "attention: %lld queries, %lld keys of width "
                                                "%lld are too many",
                            (long long)Tq, (long long)Tk, (long long)HD);
    int64_t H = heads, D = HD / heads;
    causal = causal != 0;
    if (flash_fits(q, k, v, out, B, H, D)) {
        if (q->dtype == SD_F16)
            return launch_flash<__half>((const __half *)q->data, (const __half *)k->data,
                                        (const __half *)v->data, (__half *)out->data, (int)B,
                                        (int)Tq, (int)Tk, (int)H, (int)D, causal);
        return launch_flash<__nv_bfloat16>(
            (const __nv_bfloat16 *)q->data, (const __nv_bfloat16 *)k->data,
            (const __nv_bfloat16 *)v->data, (__nv_bfloat16 *)out->data, (int)B, (int)Tq,
            (int)Tk, (int)H, (int)D, causal);
    }
    return attention_unfused(q, k, v, out, B, Tq, Tk, H, D, causal);
}

void cuda_fill_attention(sd_backend *be) { be->attention = cuda_attention; }

// Shared by every .cu file of the CUDA backend.
//
// Conventions every op follows:
// - Every kernel and every cuBLAS call runs on cuda_stream(), never the legacy default
//   stream, and no op synchronises or allocates once its buffers exist: that is what
//   lets a whole UNet step be captured as one CUDA graph and replayed.
// - Activations may be f32, f16 or bf16; all activation operands of one op (inputs and
//   out) share one dtype unless the op's comment says otherwise. Weights (the w of
//   linear/conv2d, gamma/beta, biases, embedding tables) may each be any of the three.
//   Arithmetic is in f32 registers: load with ld_f32, store with st_f32.
// - Arguments are checked first (cuda_need and friends) and a bad one is an
//   SD_ERR_INVALID naming the op and the argument; a kernel never runs out of range.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdint.h>

#include "cuda_abi.h"

// The host's functions (sd_fail and friends), handed over at load time.
extern const sd_host_api *g_host;

// Turn a CUDA runtime error into a status with a message naming the call.
sd_status cuda_check(cudaError_t err, const char *what);
// After a launch: a launch error as a status naming the kernel.
inline sd_status cuda_launched(const char *kernel) {
    return cuda_check(cudaGetLastError(), kernel);
}

// The one stream every op runs on.
cudaStream_t cuda_stream();
// Samples the device memory in use into the backend's high-water mark (backend_cuda.cu):
// call it after allocating.
void cuda_note_memory();

// Grow-only device workspaces, one per use so that two live at once never overlap.
// A workspace is valid until the next cuda_scratch call for the same slot; growing it
// waits for the stream first (only during a first, warm-up run: never inside a graph).
enum cuda_scratch_slot {
    SCRATCH_IM2COL = 0,   // conv2d's column buffer
    SCRATCH_CAST_A,       // an operand converted to another dtype
    SCRATCH_CAST_B,
    SCRATCH_ATTENTION,    // attention's temporaries, if it needs any
    SCRATCH_SLOTS
};
sd_status cuda_scratch(cuda_scratch_slot slot, size_t bytes, void **out);

// ----------------------------------------------------------------- tensors ----

inline size_t cuda_dtype_size(sd_dtype d) { return d == SD_F32 ? 4 : 2; }

inline int64_t cuda_numel(const sd_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

// Size of a tensor in bytes, computed here: the core's helpers are not linked in.
inline size_t sd_nbytes_dev(const sd_tensor *t) {
    return (size_t)cuda_numel(t) * cuda_dtype_size(t->dtype);
}

inline const char *cuda_dtype_name(sd_dtype d) {
    return d == SD_F32 ? "float32" : d == SD_F16 ? "float16" : "bfloat16";
}

// Blocks of `threads` covering n items (n > 0).
inline unsigned cuda_blocks(int64_t n, int threads) {
    return (unsigned)((n + threads - 1) / threads);
}

// ----------------------------------------------------------------- checks -----

// Present, on the GPU, 1..4 dims, none empty.
sd_status cuda_need(const sd_tensor *t, const char *op, const char *arg);
// cuda_need plus exactly `ndim` dims.
sd_status cuda_need_ndim(const sd_tensor *t, int ndim, const char *op, const char *arg);
// Same shape as `like` (dtype not compared).
sd_status cuda_need_shape(const sd_tensor *like, const sd_tensor *t, const char *op,
                          const char *arg);
// Same dtype as `like` (the activation dtype of the op).
sd_status cuda_need_dtype(const sd_tensor *like, const sd_tensor *t, const char *op,
                          const char *arg);
// A 1-dim tensor of `len` elements, on the GPU (a bias, gamma or beta).
sd_status cuda_need_vector(const sd_tensor *t, int64_t len, const char *op, const char *arg);

// ----------------------------------------------------------------- dtypes -----

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) {
    return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

template <typename T> __device__ __forceinline__ float ld_f32(const T *p, int64_t i) {
    return to_f32(p[i]);
}
template <typename T> __device__ __forceinline__ void st_f32(T *p, int64_t i, float v) {
    p[i] = from_f32<T>(v);
}

// Run the statement with T bound to the C++ type of `dtype`:
//   CUDA_DISPATCH(x->dtype, T, kernel<T><<<...>>>((const T *)x->data, ...));
#define CUDA_DISPATCH(dtype, T, ...)                \
    switch (dtype) {                                \
    case SD_F32: {                                  \
        using T = float;                            \
        __VA_ARGS__;                                \
        break;                                      \
    }                                               \
    case SD_F16: {                                  \
        using T = __half;                           \
        __VA_ARGS__;                                \
        break;                                      \
    }                                               \
    default: {                                      \
        using T = __nv_bfloat16;                    \
        __VA_ARGS__;                                \
        break;                                      \
    }                                               \
    }

// ----------------------------------------------------------------- families ---

// Each op family's file fills its entries of the table. Entries left NULL are
// reported as unsupported on this backend by the caller.
void cuda_fill_elementwise(sd_backend *be); // elementwise.cu: add, mul, scale, convert
void cuda_fill_activation(sd_backend *be);  // activation.cu: gelu, quick_gelu, silu, geglu
void cuda_fill_layout(sd_backend *be);      // layout.cu: upsample, concat, transpose, pad,
                                            //   timestep_embedding, embedding
void cuda_fill_norm(sd_backend *be);        // norm.cu: group_norm, layer_norm, softmax
void cuda_fill_attention(sd_backend *be);   // attention.cu
void cuda_fill_matmul(sd_backend *be);      // matmul.cu: linear, matmul
void cuda_fill_conv2d(sd_backend *be);      // conv2d.cu
void cuda_fill_sampler(sd_backend *be);     // sampler.cu: the samplers' updates

// ----------------------------------------------------------------- GEMM -------

// Row-major C (M, N) = A (M, K) @ B (K, N), or @ B^T with B stored (N, K) when trans_b;
// lda/ldb/ldc are row strides in elements. `batch` products with element strides
// stride_a/b/c between them (0 repeats an operand). A and B share `ab` dtype; C may be
// `c` = ab or f32; accumulation is f32 (cuBLAS, tensor cores for f16/bf16). With
// accumulate, C += A @ B instead of C = A @ B.
sd_status cuda_gemm(bool trans_b, int64_t M, int64_t N, int64_t K, const void *A, int64_t lda,
                    int64_t stride_a, const void *B, int64_t ldb, int64_t stride_b, void *C,
                    int64_t ldc, int64_t stride_c, int64_t batch, sd_dtype ab, sd_dtype c,
                    bool accumulate);

// The data of `w` in dtype `want`: w itself when it already is, else a converted copy in
// the scratch slot (valid until that slot is next used).
sd_status cuda_as_dtype(const sd_tensor *w, sd_dtype want, cuda_scratch_slot slot,
                        const void **out);

// out (rows, n) += bias (n) broadcast over rows; out dtype `dt`, bias any dtype.
sd_status cuda_add_bias_rows(void *out, sd_dtype dt, const sd_tensor *bias, int64_t rows,
                             int64_t n);
// out (planes, channels, plane) += bias (channels) per channel: NCHW conv bias.
sd_status cuda_add_bias_channels(void *out, sd_dtype dt, const sd_tensor *bias, int64_t planes,
                                 int64_t channels, int64_t plane);

// ----------------------------------------------------------------- packs ------
// (elementwise, activation, layout) A run of N elements of T moved as one aligned load or
// store: with N * sizeof(T) == 16 a warp moves 512 contiguous bytes per instruction instead
// of 128 (f32) or 64 (f16). Used only where the caller has checked that the element index
// is a multiple of N (cudaMalloc'd bases are 256-byte aligned).
template <typename T, int N> struct alignas(sizeof(T) * N) cuda_pack {
    T v[N];
};

// Elements of T in one 16-byte pack: 4 for f32, 8 for f16 and bf16.
template <typename T> __host__ __device__ constexpr int cuda_pack16() { return 16 / (int)sizeof(T); }

template <int N, typename T> __device__ __forceinline__ cuda_pack<T, N> ld_pack(const T *p,
                                                                                int64_t i) {
    return *reinterpret_cast<const cuda_pack<T, N> *>(p + i);
}
template <int N, typename T>
__device__ __forceinline__ void st_pack(T *p, int64_t i, const cuda_pack<T, N> &v) {
    *reinterpret_cast<cuda_pack<T, N> *>(p + i) = v;
}

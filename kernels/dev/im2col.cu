// conv2d's im2col kernels, checked against a CPU reference and timed.
//
//   x (B, C, H, W) -> col (B, C*KH*KW, pc): column p of image b holds the KH*KW*C input
//   values under output pixel p0 + p (zeros where the window leaves the padded input)
//
//   /usr/local/cuda/bin/nvcc -O3 -std=c++17 -arch=sm_90 -Icsrc -Ikernels \
//       kernels/dev/im2col.cu -o /tmp/im2col && /tmp/im2col
//
// Versions:
//   v1  naive: one thread per column element, its (row, pixel) and window position
//       worked out from a flat 64-bit index, one scalar store.
//   v2  kernels/conv2d.cu's im2col_kernel: one block row per column row, so the
//       (c, kh, kw) split is done once per thread; 32-bit pixel math; V consecutive
//       pixels a thread stored as one 16-byte pack.
//   v3  kernels/conv2d.cu's im2col3x3_kernel (3x3, stride 1, padding 1, rows of whole
//       packs): each thread reads its pixels and their neighbours from three input rows
//       once and writes all nine (kh, kw) rows from registers.
//   op  the dispatcher conv2d.cu runs (im2col<T>), which picks v3 where it applies.
// v2, v3 and op are the shipped code: conv2d.cu is included whole.
//
// A copy must be exact: every version is compared element for element with the
// reference (bit for bit). GB/s counts col written plus x read once.
#include <cmath>
#include <random>

#include "dev/harness.cuh"

#include "conv2d.cu"

// conv2d.cu's GEMM and workspaces: the harness runs only the im2col kernels
sd_status cuda_scratch(cuda_scratch_slot, size_t, void **) {
    return SD_ERR_UNSUPPORTED;
}
sd_status cuda_gemm(bool, int64_t, int64_t, int64_t, const void *, int64_t, int64_t, const void *,
                    int64_t, int64_t, void *, int64_t, int64_t, int64_t, sd_dtype, sd_dtype, bool) {
    return SD_ERR_UNSUPPORTED;
}
sd_status cuda_as_dtype(const sd_tensor *, sd_dtype, cuda_scratch_slot, const void **) {
    return SD_ERR_UNSUPPORTED;
}

// ------------------------------------------------------------ reference ------

static void im2col_cpu(const std::vector<float> &x, std::vector<float> &col, int B, int C, int H,
                       int W, int K, int stride, int pad, int OW, int64_t p0, int64_t pc) {
    int64_t rows = (int64_t)C * K * K;
    for (int b = 0; b < B; b++)
        for (int64_t r = 0; r < rows; r++) {
            int c = (int)(r / (K * K)), kh = (int)(r / K % K), kw = (int)(r % K);
            for (int64_t p = 0; p < pc; p++) {
                int64_t op = p0 + p;
                int oy = (int)(op / OW), ox = (int)(op % OW);
                int iy = oy * stride - pad + kh, ix = ox * stride - pad + kw;
                float v = 0.0f;
                if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                    v = x[(((int64_t)b * C + c) * H + iy) * W + ix];
                col[((int64_t)b * rows + r) * pc + p] = v;
            }
        }
}

// ------------------------------------------------------------ v1 (naive) -----

template <typename T>
__global__ void im2col_v1_kernel(const T *x, T *col, int B, int C, int H, int W, int K, int stride,
                                 int pad, int OW, int64_t p0, int64_t pc) {
    int64_t rows = (int64_t)C * K * K;
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= B * rows * pc)
        return;
    int64_t p = i % pc, r = i / pc % rows, b = i / (pc * rows);
    int c = (int)(r / (K * K)), kh = (int)(r / K % K), kw = (int)(r % K);
    int64_t op = p0 + p;
    int oy = (int)(op / OW), ox = (int)(op % OW);
    int iy = oy * stride - pad + kh, ix = ox * stride - pad + kw;
    col[i] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[((b * C + c) * H + iy) * W + ix]
                                                      : from_f32<T>(0.0f);
}

// ------------------------------------------------------------ harness --------

struct im2col_case {
    int B, C, H, W, K, stride, pad;
    int64_t p0, pc; // the chunk of output pixels; pc 0: all of them
    const char *what;
};

enum version { V1, V2, V3, OP, VERSIONS };
static const char *version_name[VERSIONS] = {"v1", "v2", "v3", "op"};

static bool v3_applies(const im2col_case &k, int V) {
    return k.K == 3 && k.stride == 1 && k.pad == 1 && k.W % V == 0 && k.p0 % V == 0 &&
           k.pc % V == 0;
}

template <typename T>
static sd_status run_version(version v, const im2col_case &k, int OW, const T *x, T *col) {
    const int threads = 128;
    constexpr int V = cuda_pack16<T>();
    int64_t rows = (int64_t)k.C * k.K * k.K, x_image = (int64_t)k.C * k.H * k.W;
    int64_t col_image = rows * k.pc;
    switch (v) {
    case V1: {
        int64_t n = k.B * rows * k.pc;
        im2col_v1_kernel<T><<<(unsigned)((n + 255) / 256), 256, 0, g_stream>>>(
            x, col, k.B, k.C, k.H, k.W, k.K, k.stride, k.pad, OW, k.p0, k.pc);
        return cuda_launched("im2col_v1_kernel");
    }
    case V2: {
        bool packed = k.pc % V == 0;
        dim3 grid(cuda_blocks(k.pc / (packed ? V : 1), threads), (unsigned)rows, (unsigned)k.B);
        if (packed)
            im2col_kernel<T, V><<<grid, threads, 0, g_stream>>>(x, col, k.C, k.H, k.W, k.K, k.K,
                                                                k.stride, k.pad, OW, (int)k.p0,
                                                                (int)k.pc, 0, x_image, col_image);
        else
            im2col_kernel<T, 1><<<grid, threads, 0, g_stream>>>(x, col, k.C, k.H, k.W, k.K, k.K,
                                                                k.stride, k.pad, OW, (int)k.p0,
                                                                (int)k.pc, 0, x_image, col_image);
        return cuda_launched("im2col_kernel");
    }
    case V3: {
        dim3 grid(cuda_blocks(k.pc / V, threads), (unsigned)k.C, (unsigned)k.B);
        im2col3x3_kernel<T><<<grid, threads, 0, g_stream>>>(x, col, k.H, k.W, (int)k.p0, (int)k.pc,
                                                            x_image, col_image);
        return cuda_launched("im2col3x3_kernel");
    }
    default:
        return im2col<T>(x, col, k.B, k.C, k.H, k.W, k.K, k.K, k.stride, k.pad, OW, k.p0, k.pc,
                         x_image, col_image);
    }
}

// Returns the number of failed checks.
template <typename T> static int run_case(im2col_case k, const char *dtype) {
    int OH = (k.H + 2 * k.pad - k.K) / k.stride + 1, OW = (k.W + 2 * k.pad - k.K) / k.stride + 1;
    if (k.pc == 0)
        k.pc = (int64_t)OH * OW - k.p0;
    int64_t nx = (int64_t)k.B * k.C * k.H * k.W, ncol = (int64_t)k.B * k.C * k.K * k.K * k.pc;
    std::mt19937 gen(1234);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(nx), ref(ncol);
    std::vector<T> xh(nx), got(ncol);
    for (int64_t i = 0; i < nx; i++) {
        xh[i] = T(normal(gen));
        x[i] = (float)xh[i];
    }
    im2col_cpu(x, ref, k.B, k.C, k.H, k.W, k.K, k.stride, k.pad, OW, k.p0, k.pc);

    T *dx, *dcol;
    CHECK_CUDA(cudaMalloc(&dx, nx * sizeof(T)));
    CHECK_CUDA(cudaMalloc(&dcol, ncol * sizeof(T)));
    CHECK_CUDA(cudaMemcpy(dx, xh.data(), nx * sizeof(T), cudaMemcpyHostToDevice));
    double bytes = (double)(ncol + nx) * sizeof(T);
    int failures = 0;
    for (int v = 0; v < VERSIONS; v++) {
        if (v == V3 && !v3_applies(k, cuda_pack16<T>()))
            continue;
        // NaN where nothing is written; on the op stream: a plain cudaMemset runs on the legacy
        // stream, which a non-blocking stream does not wait for
        CHECK_CUDA(cudaMemsetAsync(dcol, 0xff, ncol * sizeof(T), g_stream));
        if (run_version<T>((version)v, k, OW, dx, dcol) != SD_OK) {
            std::printf("%-34s %-4s %-3s launch FAILED\n", k.what, dtype, version_name[v]);
            failures++;
            continue;
        }
        CHECK_CUDA(cudaStreamSynchronize(g_stream));
        CHECK_CUDA(cudaMemcpy(got.data(), dcol, ncol * sizeof(T), cudaMemcpyDeviceToHost));
        int64_t wrong = 0;
        for (int64_t i = 0; i < ncol; i++)
            wrong += !((float)got[i] == ref[i]);
        failures += wrong != 0;
        float ms = time_ms([&] { run_version<T>((version)v, k, OW, dx, dcol); });
        std::printf("%-34s %-4s %-3s %9.2f us %8.0f GB/s   %lld wrong %s\n", k.what, dtype,
                    version_name[v], ms * 1e3f, bytes / (ms * 1e-3) / 1e9, (long long)wrong,
                    wrong ? "FAILED" : "ok");
    }
    CHECK_CUDA(cudaFree(dx));
    CHECK_CUDA(cudaFree(dcol));
    return failures;
}

int main() {
    harness_init();
    const im2col_case cases[] = {
        {2, 320, 64, 64, 3, 1, 1, 0, 0, "UNet 3x3 (2, 320, 64, 64)"},
        {2, 640, 32, 32, 3, 1, 1, 0, 0, "UNet 3x3 (2, 640, 32, 32)"},
        {2, 1280, 16, 16, 3, 1, 1, 0, 0, "UNet 3x3 (2, 1280, 16, 16)"},
        {2, 1280, 8, 8, 3, 1, 1, 0, 0, "UNet 3x3 (2, 1280, 8, 8)"},
        {2, 320, 64, 64, 3, 2, 1, 0, 0, "UNet downsample 3x3/2 (2, 320, 64)"},
        {1, 512, 64, 64, 3, 1, 1, 0, 0, "VAE 3x3 (1, 512, 64, 64)"},
        // conv2d.cu's first two chunks of a 512x512 layer (64 MB column buffer)
        {1, 128, 512, 512, 3, 1, 1, 0, 28928, "VAE 3x3 (1, 128, 512, 512) chunk 1"},
        {1, 128, 512, 512, 3, 1, 1, 28928, 28928, "VAE 3x3 (1, 128, 512, 512) chunk 2"},
        {1, 3, 17, 13, 3, 1, 1, 0, 0, "odd 3x3 (1, 3, 17, 13)"}, // unpacked
        {2, 5, 9, 9, 5, 2, 2, 0, 0, "odd 5x5/2 (2, 5, 9, 9)"},
    };
    int failures = 0;
    for (const im2col_case &k : cases) {
        failures += run_case<__half>(k, "f16");
        if ((int64_t)k.C * k.H * k.W < (1 << 22))
            failures += run_case<float>(k, "f32");
    }
    std::printf(failures ? "%d checks FAILED\n" : "all checks passed\n", failures);
    return failures ? 1 : 0;
}

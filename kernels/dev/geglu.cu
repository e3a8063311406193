// GEGLU kernels, checked against a CPU reference and timed.
//
//   x (M, 2N) f16 -> out (M, N) = x[:, :N] * gelu_erf(x[:, N:]), math in f32
//
// Build and run (standalone: no sdcore library, no cuBLAS):
//   /usr/local/cuda/bin/nvcc -O3 -std=c++17 -arch=sm_90 -Icsrc -Ikernels \
//       kernels/dev/geglu.cu -o /tmp/geglu && /tmp/geglu
//
// Versions:
//   1  naive: one thread per output, two scalar 2-byte loads and one 2-byte store
//   2  vectorised: 8 outputs a thread, 16-byte loads of the value and gate halves read
//      as four half2 each, f32 math, one 16-byte store (kernels/activation.cu's
//      geglu_kernel is this one, templated over f32/f16/bf16)
// The op reads 4 bytes and writes 2 per output, so it is bandwidth bound; the table
// shows achieved GB/s against the device's peak.
//
// Exit status 1 when any version differs from the reference by more than one f16 ulp
// (the GPU result is f32 math rounded once to f16: within half an ulp, plus erff's
// couple of f32 ulps).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#define CHECK_CUDA(call)                                                                       \
    do {                                                                                       \
        cudaError_t err_ = (call);                                                             \
        if (err_ != cudaSuccess) {                                                             \
            std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                 \
                         cudaGetErrorString(err_));                                            \
            std::exit(2);                                                                      \
        }                                                                                      \
    } while (0)

// ----------------------------------------------------------------- reference --

// The CPU backend's geglu_row, on f16 inputs widened to f32.
static void geglu_reference(const std::vector<__half> &x, std::vector<float> &out, int64_t M,
                            int64_t N) {
    for (int64_t m = 0; m < M; m++) {
        const __half *row = x.data() + m * 2 * N;
        for (int64_t j = 0; j < N; j++) {
            float v = __half2float(row[j]), g = __half2float(row[N + j]);
            out[m * N + j] = v * 0.5f * g * (1.0f + erff(g * 0.70710678118654752f));
        }
    }
}

// ----------------------------------------------------------------- version 1 --

__global__ void geglu_v1(const __half *x, __half *out, int64_t M, int64_t N) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= M * N)
        return;
    int64_t m = i / N, j = i - m * N;
    float v = __half2float(x[m * 2 * N + j]), g = __half2float(x[m * 2 * N + N + j]);
    out[i] = __float2half_rn(v * 0.5f * g * (1.0f + erff(g * 0.70710678118654752f)));
}

// ----------------------------------------------------------------- version 2 --

__device__ __forceinline__ float geglu_f32(float v, float g) {
    return v * 0.5f * g * (1.0f + erff(g * 0.70710678118654752f));
}

// 8 outputs a thread; needs N % 8 == 0 so a run stays in one row and loads are aligned.
__global__ void geglu_v2(const __half *x, __half *out, int64_t M, int64_t N) {
    int64_t o0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (o0 >= M * N)
        return;
    int64_t m = o0 / N, j = o0 - m * N;
    const __half *row = x + m * 2 * N;
    uint4 vraw = *reinterpret_cast<const uint4 *>(row + j);
    uint4 graw = *reinterpret_cast<const uint4 *>(row + N + j);
    const __half2 *v2 = reinterpret_cast<const __half2 *>(&vraw);
    const __half2 *g2 = reinterpret_cast<const __half2 *>(&graw);
    uint4 oraw;
    __half2 *o2 = reinterpret_cast<__half2 *>(&oraw);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float2 v = __half22float2(v2[k]), g = __half22float2(g2[k]);
        o2[k] = __floats2half2_rn(geglu_f32(v.x, g.x), geglu_f32(v.y, g.y));
    }
    *reinterpret_cast<uint4 *>(out + o0) = oraw;
}

// ----------------------------------------------------------------- harness ----

typedef void (*launch_fn)(const __half *x, __half *out, int64_t M, int64_t N);

static void launch_v1(const __half *x, __half *out, int64_t M, int64_t N) {
    int64_t n = M * N;
    geglu_v1<<<(unsigned)((n + 255) / 256), 256>>>(x, out, M, N);
}

static void launch_v2(const __half *x, __half *out, int64_t M, int64_t N) {
    int64_t n = M * N / 8;
    geglu_v2<<<(unsigned)((n + 255) / 256), 256>>>(x, out, M, N);
}

struct version {
    const char *name;
    launch_fn launch;
};

static const version versions[] = {
    {"v1 naive", launch_v1},
    {"v2 16B half2", launch_v2},
};
static const int n_versions = sizeof versions / sizeof versions[0];

// Largest error in f16 ulps of the reference value. The ulp is at least 2^-22 of the
// largest |ref|: deep in the gate's negative tail 1 + erf(g / sqrt 2) cancels in f32
// (as it does in PyTorch's f32 GELU), leaving values near zero whose own ulp is far
// below that rounding.
static double max_ulp_error(const std::vector<__half> &got, const std::vector<float> &ref) {
    double worst = 0.0, largest = 0.0;
    for (float r : ref)
        largest = std::max(largest, (double)std::fabs(r));
    double floor_ulp = std::max(std::ldexp(largest, -22), std::ldexp(1.0, -24));
    for (size_t i = 0; i < ref.size(); i++) {
        double r = ref[i], g = __half2float(got[i]);
        if (!std::isfinite(g))
            return INFINITY;
        int e;
        std::frexp(std::fabs(r), &e); // |r| in [2^(e-1), 2^e)
        double ulp = std::max(std::ldexp(1.0, e - 11), floor_ulp);
        worst = std::max(worst, std::fabs(g - r) / ulp);
    }
    return worst;
}

static float median_ms(launch_fn launch, const __half *x, __half *out, int64_t M, int64_t N) {
    cudaEvent_t start, stop;
    CHECK_CUDA(cudaEventCreate(&start));
    CHECK_CUDA(cudaEventCreate(&stop));
    for (int i = 0; i < 3; i++) // warm-up: clocks, instruction cache
        launch(x, out, M, N);
    CHECK_CUDA(cudaGetLastError());
    std::vector<float> times;
    for (int i = 0; i < 20; i++) {
        CHECK_CUDA(cudaEventRecord(start));
        launch(x, out, M, N);
        CHECK_CUDA(cudaEventRecord(stop));
        CHECK_CUDA(cudaEventSynchronize(stop));
        float ms;
        CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
        times.push_back(ms);
    }
    CHECK_CUDA(cudaEventDestroy(start));
    CHECK_CUDA(cudaEventDestroy(stop));
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

int main() {
    // The GEGLU inputs of SD 1.5's transformer blocks at 512x512, batch 2 (CFG):
    // (tokens, 2 * 4 * width) at widths 320, 640, 1280, 1280.
    const int64_t shapes[][2] = {{2 * 4096, 1280}, {2 * 1024, 2560}, {2 * 256, 5120},
                                 {2 * 64, 5120}};
    const int n_shapes = sizeof shapes / sizeof shapes[0];

    cudaDeviceProp prop;
    CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s\n", prop.name);

    std::mt19937 gen(1234);
    std::normal_distribution<float> normal(0.0f, 2.0f); // gates well into both tails
    bool ok = true;

    std::printf("\n%-14s %-16s %10s %10s %8s %10s\n", "shape (M, 2N)", "version", "max ulp",
                "time ms", "GB/s", "vs v1");
    for (int s = 0; s < n_shapes; s++) {
        int64_t M = shapes[s][0], N = shapes[s][1];
        std::vector<__half> x((size_t)(M * 2 * N));
        for (auto &v : x)
            v = __float2half_rn(normal(gen));
        std::vector<float> ref((size_t)(M * N));
        geglu_reference(x, ref, M, N);

        __half *dx, *dout;
        CHECK_CUDA(cudaMalloc(&dx, x.size() * sizeof(__half)));
        CHECK_CUDA(cudaMalloc(&dout, ref.size() * sizeof(__half)));
        CHECK_CUDA(cudaMemcpy(dx, x.data(), x.size() * sizeof(__half), cudaMemcpyHostToDevice));

        double bytes = (double)M * 2 * N * 2 + (double)M * N * 2;
        float base_ms = 0.0f;
        for (int v = 0; v < n_versions; v++) {
            // check: fill out with NaN first so a kernel that skips elements is caught
            CHECK_CUDA(cudaMemset(dout, 0xff, ref.size() * sizeof(__half)));
            versions[v].launch(dx, dout, M, N);
            CHECK_CUDA(cudaGetLastError());
            CHECK_CUDA(cudaDeviceSynchronize());
            std::vector<__half> got(ref.size());
            CHECK_CUDA(cudaMemcpy(got.data(), dout, got.size() * sizeof(__half),
                                  cudaMemcpyDeviceToHost));
            double ulps = max_ulp_error(got, ref);
            bool pass = ulps <= 1.0;
            ok = ok && pass;

            float ms = median_ms(versions[v].launch, dx, dout, M, N);
            if (v == 0)
                base_ms = ms;
            char shape[32];
            std::snprintf(shape, sizeof shape, "(%lld, %lld)", (long long)M, (long long)(2 * N));
            std::printf("%-14s %-16s %10.3f %10.4f %8.0f %9.2fx%s\n", shape, versions[v].name,
                        ulps, ms, bytes / (ms * 1e-3) / 1e9, base_ms / ms,
                        pass ? "" : "  FAILED");
        }
        CHECK_CUDA(cudaFree(dx));
        CHECK_CUDA(cudaFree(dout));
    }
    std::printf("\n%s\n", ok ? "all versions match the reference" : "MISMATCH");
    return ok ? 0 : 1;
}

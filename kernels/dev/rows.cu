// LayerNorm and softmax over rows (the last dim), checked against a CPU reference and
// timed.
//
//   layer_norm: x (rows, n), gamma, beta (n) -> out (rows, n)
//   softmax:    x (rows, n) -> out (rows, n)
//
//   /usr/local/cuda/bin/nvcc -O3 -std=c++17 -arch=sm_90 -Icsrc -Ikernels \
//       kernels/dev/rows.cu -o /tmp/rows && /tmp/rows
//
// Versions:
//   v1  naive: one block a row, one element at a time, a pass over global memory for each
//       statistic (LayerNorm: mean, variance, normalise; softmax: max, sum, write).
//   v2  kernels/norm.cu's row kernels: a row held in registers by a warp (short rows) or a
//       block (longer), 16-byte loads, exact two-pass statistics over the registers, one
//       read and one write; rows too long for registers go to the long-row kernel.
//   op  the backend entry points cuda_layer_norm / cuda_softmax (pack or scalar loads).
// v2 and op are the shipped code: norm.cu is included whole. Exits 1 when any check
// fails. GB/s counts one read of x and one write of out.
#include <cmath>
#include <random>

#include "dev/harness.cuh"

#include "norm.cu"

// ------------------------------------------------------------ reference ------

static void layer_norm_cpu(const std::vector<float> &x, const std::vector<float> &g,
                           const std::vector<float> &b, std::vector<float> &out, int64_t rows,
                           int n, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x.data() + r * n;
        double mean = 0.0, var = 0.0;
        for (int i = 0; i < n; i++)
            mean += xr[i];
        mean /= n;
        for (int i = 0; i < n; i++)
            var += (xr[i] - mean) * (xr[i] - mean);
        double rstd = 1.0 / std::sqrt(var / n + eps);
        for (int i = 0; i < n; i++)
            out[r * n + i] = (float)((xr[i] - mean) * rstd * g[i] + b[i]);
    }
}

static void softmax_cpu(const std::vector<float> &x, std::vector<float> &out, int64_t rows, int n) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x.data() + r * n;
        double m = -INFINITY, s = 0.0;
        for (int i = 0; i < n; i++)
            m = std::max(m, (double)xr[i]);
        for (int i = 0; i < n; i++)
            s += std::exp(xr[i] - m);
        for (int i = 0; i < n; i++)
            out[r * n + i] = (float)(std::exp(xr[i] - m) / s);
    }
}

// ------------------------------------------------------------ v1 (naive) -----

static const int V1_THREADS = 256;

template <typename T>
__global__ void __launch_bounds__(V1_THREADS)
    layer_norm_v1_kernel(const T *x, T *out, const float *g, const float *b, int n, float eps) {
    __shared__ float shared[32];
    const T *xr = x + (int64_t)blockIdx.x * n;
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        s += to_f32(xr[i]);
    float mean = row_reduce<V1_THREADS, false>(s, shared) / (float)n;
    float q = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float d = to_f32(xr[i]) - mean;
        q += d * d;
    }
    float rstd = rsqrtf(row_reduce<V1_THREADS, false>(q, shared) / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        out[(int64_t)blockIdx.x * n + i] = from_f32<T>((to_f32(xr[i]) - mean) * rstd * g[i] + b[i]);
}

template <typename T>
__global__ void __launch_bounds__(V1_THREADS) softmax_v1_kernel(const T *x, T *out, int n) {
    __shared__ float shared[32];
    const T *xr = x + (int64_t)blockIdx.x * n;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        m = fmaxf(m, to_f32(xr[i]));
    m = row_reduce<V1_THREADS, true>(m, shared);
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        s += __expf(to_f32(xr[i]) - m);
    float inv = 1.0f / row_reduce<V1_THREADS, false>(s, shared);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        out[(int64_t)blockIdx.x * n + i] = from_f32<T>(__expf(to_f32(xr[i]) - m) * inv);
}

// ------------------------------------------------------------ harness --------

struct rows_case {
    int64_t rows;
    int n;
    const char *what;
};

enum version { V1, V2, OP, VERSIONS };
static const char *version_name[VERSIONS] = {"v1", "v2", "op"};

static sd_dtype dtype_of(float) {
    return SD_F32;
}
static sd_dtype dtype_of(__half) {
    return SD_F16;
}

template <typename T>
static sd_status run_version(version v, bool softmax, const rows_case &k, const T *x, T *out,
                             const float *g, const float *b) {
    norm_affine a = {g, b, SD_F32, SD_F32};
    constexpr int P = pack_width<T>();
    switch (v) {
    case V1:
        if (softmax)
            softmax_v1_kernel<T><<<(unsigned)k.rows, V1_THREADS, 0, g_stream>>>(x, out, k.n);
        else
            layer_norm_v1_kernel<T>
                <<<(unsigned)k.rows, V1_THREADS, 0, g_stream>>>(x, out, g, b, k.n, 1e-5f);
        return cuda_launched("v1");
    case V2:
        if (k.n % P)
            return softmax ? launch_softmax<T, 1>(x, out, k.rows, k.n)
                           : launch_layer_norm<T, 1>(x, out, k.rows, k.n, 1e-5f, a);
        return softmax ? launch_softmax<T, P>(x, out, k.rows, k.n)
                       : launch_layer_norm<T, P>(x, out, k.rows, k.n, 1e-5f, a);
    default: {
        sd_tensor tx = {(void *)x, dtype_of(T()), SD_CUDA, 2, {k.rows, k.n}};
        sd_tensor to = tx;
        to.data = out;
        if (softmax)
            return cuda_softmax(nullptr, &tx, &to);
        sd_tensor tg = {(void *)g, SD_F32, SD_CUDA, 1, {k.n}}, tb = tg;
        tb.data = (void *)b;
        return cuda_layer_norm(nullptr, &tx, &tg, &tb, 1e-5f, &to);
    }
    }
}

// Returns the number of failed checks.
template <typename T>
static int run_case(const rows_case &k, bool softmax, const char *dtype, float tol) {
    int64_t N = k.rows * k.n;
    std::mt19937 gen(1234);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(N), g(k.n), b(k.n), ref(N);
    std::vector<T> xh(N), got(N);
    for (int64_t i = 0; i < N; i++) {
        // LayerNorm rows get an offset (a naive E[x^2] - E[x]^2 would cancel); softmax
        // rows a spread of logits like attention scores
        xh[i] = T(softmax ? 4.0f * normal(gen) : normal(gen) + 3.0f);
        x[i] = (float)xh[i];
    }
    for (int i = 0; i < k.n; i++) {
        g[i] = 1.0f + 0.1f * normal(gen);
        b[i] = 0.1f * normal(gen);
    }
    if (softmax)
        softmax_cpu(x, ref, k.rows, k.n);
    else
        layer_norm_cpu(x, g, b, ref, k.rows, k.n, 1e-5f);
    double ref_max = 0.0;
    for (float r : ref)
        ref_max = std::max(ref_max, (double)std::fabs(r));

    T *dx, *dout;
    float *dg, *db;
    CHECK_CUDA(cudaMalloc(&dx, N * sizeof(T)));
    CHECK_CUDA(cudaMalloc(&dout, N * sizeof(T)));
    CHECK_CUDA(cudaMalloc(&dg, k.n * sizeof(float)));
    CHECK_CUDA(cudaMalloc(&db, k.n * sizeof(float)));
    CHECK_CUDA(cudaMemcpy(dx, xh.data(), N * sizeof(T), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dg, g.data(), k.n * sizeof(float), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(db, b.data(), k.n * sizeof(float), cudaMemcpyHostToDevice));
    double bytes = 2.0 * (double)N * sizeof(T);
    const char *op = softmax ? "softmax" : "layer_norm";
    int failures = 0;
    for (int v = 0; v < VERSIONS; v++) {
        // NaN where nothing is written; on the op stream: a plain cudaMemset runs on the legacy
        // stream, which a non-blocking stream does not wait for
        CHECK_CUDA(cudaMemsetAsync(dout, 0xff, N * sizeof(T), g_stream));
        if (run_version<T>((version)v, softmax, k, dx, dout, dg, db) != SD_OK) {
            std::printf("%-10s %-26s %-4s %-3s launch FAILED\n", op, k.what, dtype,
                        version_name[v]);
            failures++;
            continue;
        }
        CHECK_CUDA(cudaStreamSynchronize(g_stream));
        CHECK_CUDA(cudaMemcpy(got.data(), dout, N * sizeof(T), cudaMemcpyDeviceToHost));
        double err = 0.0;
        for (int64_t i = 0; i < N; i++) {
            double d = std::fabs((double)(float)got[i] - ref[i]);
            err = std::isnan(d) ? INFINITY : std::max(err, d);
        }
        err /= ref_max;
        bool ok = err <= tol;
        failures += !ok;
        float ms = time_ms([&] { run_version<T>((version)v, softmax, k, dx, dout, dg, db); });
        std::printf("%-10s %-26s %-4s %-3s %9.2f us %8.0f GB/s   max err %.2e %s\n", op, k.what,
                    dtype, version_name[v], ms * 1e3f, bytes / (ms * 1e-3) / 1e9, err,
                    ok ? "ok" : "FAILED");
    }
    CHECK_CUDA(cudaFree(dx));
    CHECK_CUDA(cudaFree(dout));
    CHECK_CUDA(cudaFree(dg));
    CHECK_CUDA(cudaFree(db));
    return failures;
}

int main() {
    harness_init();
    const rows_case norms[] = {
        {2 * 4096, 320, "UNet (2, 4096, 320)"},
        {2 * 1024, 640, "UNet (2, 1024, 640)"},
        {2 * 256, 1280, "UNet (2, 256, 1280)"},
        {2 * 64, 1280, "UNet (2, 64, 1280)"},
        {2 * 77, 768, "CLIP (2, 77, 768)"},
        {64, 12288, "long (64, 12288)"},
        {37, 100, "odd (37, 100)"},
    };
    const rows_case softmaxes[] = {
        {2 * 8 * 77, 77, "CLIP scores (2*8*77, 77)"},
        {2 * 8 * 4096, 77, "cross (2*8*4096, 77)"},
        {8 * 1024, 1024, "self (8*1024, 1024)"},
        {64, 20000, "long (64, 20000)"},
        {37, 100, "odd (37, 100)"},
    };
    // tolerances: f32 rounding (and __expf's few ulps); f16 adds rounding the output
    int failures = 0;
    for (const rows_case &k : norms) {
        failures += run_case<float>(k, false, "f32", 2e-5f);
        failures += run_case<__half>(k, false, "f16", 1.5e-3f);
    }
    for (const rows_case &k : softmaxes) {
        failures += run_case<float>(k, true, "f32", 2e-5f);
        failures += run_case<__half>(k, true, "f16", 1.5e-3f);
    }
    std::printf(failures ? "%d checks FAILED\n" : "all checks passed\n", failures);
    return failures ? 1 : 0;
}

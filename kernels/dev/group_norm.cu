// GroupNorm (+SiLU) kernels, checked against a CPU reference and timed.
//
//   /usr/local/cuda/bin/nvcc -O3 -std=c++17 -arch=sm_90 -Icsrc -Ikernels \
//       kernels/dev/group_norm.cu -o /tmp/group_norm && /tmp/group_norm
//
// Versions:
//   v1  naive: one block a group, one element at a time, three passes over global memory
//       (sum, squared deviations, normalise).
//   v2  kernels/norm.cu's group_norm_kernel: one block a group, 16-byte packs, mean and
//       variance in one read by merged per-pack moments, then normalise.
//   v3  kernels/norm.cu's split scheme: each group's statistics over several blocks
//       (group_norm_partial_kernel), merged by group_norm_apply_kernel, which normalises.
//   op  the backend entry point cuda_group_norm, which picks v2 or v3 by its heuristic.
// v2, v3 and op are the shipped code: norm.cu is included whole, with the few host
// functions of backend_cuda.cu it calls stubbed (dev/harness.cuh). Exits 1 when any check
// fails.
//
// GB/s counts the bytes the scheme moves: x read twice (statistics, normalise) and out
// written once (v1 reads x three times but is credited with the same bytes).
#include <cmath>
#include <random>

#include "dev/harness.cuh"

#include "norm.cu"

// ------------------------------------------------------------ reference ------

// x (B, C, S) -> out, in double: two passes per group, as csrc/cpu/norm.c.
static void group_norm_cpu(const std::vector<float> &x, const std::vector<float> &gamma,
                           const std::vector<float> &beta, std::vector<float> &out, int B, int C,
                           int64_t S, int groups, float eps, bool silu) {
    int cpg = C / groups;
    int64_t n = (int64_t)cpg * S;
    for (int64_t bg = 0; bg < (int64_t)B * groups; bg++) {
        const float *xg = x.data() + bg * n;
        float *og = out.data() + bg * n;
        double mean = 0.0, var = 0.0;
        for (int64_t i = 0; i < n; i++)
            mean += xg[i];
        mean /= (double)n;
        for (int64_t i = 0; i < n; i++)
            var += (xg[i] - mean) * (xg[i] - mean);
        double rstd = 1.0 / std::sqrt(var / (double)n + eps);
        int c0 = (int)(bg % groups) * cpg;
        for (int64_t i = 0; i < n; i++) {
            int c = c0 + (int)(i / S);
            double y = (xg[i] - mean) * rstd * gamma[c] + beta[c];
            og[i] = (float)(silu ? y / (1.0 + std::exp(-y)) : y);
        }
    }
}

// ------------------------------------------------------------ v1 (naive) -----

template <typename T>
__global__ void __launch_bounds__(GROUP_NORM_THREADS)
    group_norm_v1_kernel(const T *x, T *out, const float *gamma, const float *beta, int64_t S,
                         int cpg, int groups, float eps, int silu) {
    __shared__ float shared[32];
    int64_t bg = blockIdx.x, n = (int64_t)cpg * S;
    const T *xg = x + bg * n;
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        s += ld_f32(xg, i);
    float mean = row_reduce<GROUP_NORM_THREADS, false>(s, shared) / (float)n;
    float q = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        float d = ld_f32(xg, i) - mean;
        q += d * d;
    }
    float rstd = rsqrtf(row_reduce<GROUP_NORM_THREADS, false>(q, shared) / (float)n + eps);
    int c0 = (int)(bg % groups) * cpg;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        int c = c0 + (int)(i / S);
        float y = (ld_f32(xg, i) - mean) * rstd * gamma[c] + beta[c];
        st_f32(out + bg * n, i, silu ? silu_f32(y) : y);
    }
}

// ------------------------------------------------------------ harness --------

struct gn_case {
    int B, C, H, W, groups;
    bool silu;
    const char *what;
};

enum version { V1, V2, V3, OP, VERSIONS };
static const char *version_name[VERSIONS] = {"v1", "v2", "v3", "op"};

static sd_dtype dtype_of(float) {
    return SD_F32;
}
static sd_dtype dtype_of(__half) {
    return SD_F16;
}
static sd_dtype dtype_of(__nv_bfloat16) {
    return SD_BF16;
}

template <typename T>
static sd_status run_version(version v, const gn_case &k, T *x, T *out, float *gamma, float *beta) {
    int64_t S = (int64_t)k.H * k.W;
    int cpg = k.C / k.groups;
    int64_t groups_total = (int64_t)k.B * k.groups;
    norm_affine a = {gamma, beta, SD_F32, SD_F32};
    constexpr int P = pack_width<T>();
    bool packs = packs_fit<T>(x, out, S);
    switch (v) {
    case V1:
        group_norm_v1_kernel<T><<<(unsigned)groups_total, GROUP_NORM_THREADS, 0, g_stream>>>(
            x, out, gamma, beta, S, cpg, k.groups, 1e-5f, k.silu);
        return cuda_launched("group_norm_v1_kernel");
    case V2:
    case V3: {
        int slices = 1;
        if (v == V3) // the heuristic's choice, at least two
            slices = std::max(2, group_norm_slices(groups_total, (int64_t)cpg * S));
        if (packs)
            return launch_group_norm<T, P>(x, out, groups_total, S, cpg, k.groups, 1e-5f, a, k.silu,
                                           slices);
        return launch_group_norm<T, 1>(x, out, groups_total, S, cpg, k.groups, 1e-5f, a, k.silu,
                                       slices);
    }
    default: {
        sd_tensor tx = {x, dtype_of(T()), SD_CUDA, 4, {k.B, k.C, k.H, k.W}};
        sd_tensor to = tx;
        to.data = out;
        sd_tensor tg = {gamma, SD_F32, SD_CUDA, 1, {k.C, 1, 1, 1}};
        sd_tensor tb = tg;
        tb.data = beta;
        return cuda_group_norm(nullptr, &tx, &tg, &tb, k.groups, 1e-5f, k.silu, &to);
    }
    }
}

// Returns the number of failed checks.
template <typename T> static int run_case(const gn_case &k, const char *dtype, float tol) {
    int64_t S = (int64_t)k.H * k.W, N = (int64_t)k.B * k.C * S;
    std::mt19937 gen(1234);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(N), gamma(k.C), beta(k.C), ref(N), got(N);
    std::vector<T> xh(N), oh(N);
    for (int64_t i = 0; i < N; i++) {
        xh[i] = T(normal(gen) + 3.0f); // an offset: a naive E[x^2] - E[x]^2 would cancel
        x[i] = (float)xh[i];           // the reference sees the rounded input
    }
    for (int c = 0; c < k.C; c++) {
        gamma[c] = 1.0f + 0.1f * normal(gen);
        beta[c] = 0.1f * normal(gen);
    }
    group_norm_cpu(x, gamma, beta, ref, k.B, k.C, S, k.groups, 1e-5f, k.silu);
    double ref_max = 0.0;
    for (float r : ref)
        ref_max = std::max(ref_max, (double)std::fabs(r));

    T *dx, *dout;
    float *dg, *db;
    CHECK_CUDA(cudaMalloc(&dx, N * sizeof(T)));
    CHECK_CUDA(cudaMalloc(&dout, N * sizeof(T)));
    CHECK_CUDA(cudaMalloc(&dg, k.C * sizeof(float)));
    CHECK_CUDA(cudaMalloc(&db, k.C * sizeof(float)));
    CHECK_CUDA(cudaMemcpy(dx, xh.data(), N * sizeof(T), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dg, gamma.data(), k.C * sizeof(float), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(db, beta.data(), k.C * sizeof(float), cudaMemcpyHostToDevice));

    int failures = 0;
    double bytes = 3.0 * (double)N * sizeof(T);
    for (int v = 0; v < VERSIONS; v++) {
        // NaN where nothing is written; on the op stream: a plain cudaMemset runs on the legacy
        // stream, which a non-blocking stream does not wait for
        CHECK_CUDA(cudaMemsetAsync(dout, 0xff, N * sizeof(T), g_stream));
        if (run_version<T>((version)v, k, dx, dout, dg, db) != SD_OK) {
            std::printf("%-28s %-5s %-3s launch FAILED\n", k.what, dtype, version_name[v]);
            failures++;
            continue;
        }
        CHECK_CUDA(cudaStreamSynchronize(g_stream));
        CHECK_CUDA(cudaMemcpy(oh.data(), dout, N * sizeof(T), cudaMemcpyDeviceToHost));
        double err = 0.0;
        for (int64_t i = 0; i < N; i++) {
            double d = std::fabs((double)(float)oh[i] - ref[i]);
            err = std::isnan(d) ? INFINITY : std::max(err, d);
        }
        err /= ref_max;
        bool ok = err <= tol;
        failures += !ok;

        float ms = time_ms([&] { run_version<T>((version)v, k, dx, dout, dg, db); });
        std::printf("%-28s %-5s %-3s %9.2f us %8.0f GB/s   max err %.2e %s\n", k.what, dtype,
                    version_name[v], ms * 1e3f, bytes / (ms * 1e-3) / 1e9, err,
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
    const gn_case cases[] = {
        {2, 320, 64, 64, 32, true, "UNet (2, 320, 64, 64) silu"},
        {2, 640, 32, 32, 32, true, "UNet (2, 640, 32, 32) silu"},
        {2, 1280, 16, 16, 32, true, "UNet (2, 1280, 16, 16) silu"},
        {2, 1280, 8, 8, 32, false, "UNet (2, 1280, 8, 8)"},
        {1, 512, 64, 64, 32, true, "VAE (1, 512, 64, 64) silu"},
        {1, 128, 512, 512, 32, true, "VAE (1, 128, 512, 512) silu"},
        {3, 96, 5, 7, 32, true, "odd (3, 96, 5, 7) silu"}, // unpacked path: S = 35
    };
    // tolerances: f32 rounding of the statistics; f16/bf16 add rounding the output
    // (half an ulp: 2^-11 and 2^-8 of values up to ~ the max)
    int failures = 0;
    for (const gn_case &k : cases) {
        failures += run_case<float>(k, "f32", 2e-5f);
        failures += run_case<__half>(k, "f16", 1.5e-3f);
        if (k.B * k.C * (int64_t)k.H * k.W < (1 << 22))
            failures += run_case<__nv_bfloat16>(k, "bf16", 1e-2f);
    }
    std::printf(failures ? "%d checks FAILED\n" : "all checks passed\n", failures);
    return failures ? 1 : 0;
}

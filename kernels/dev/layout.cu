// The layout ops (upsample_nearest2x, transpose_last2, concat_channels, pad_bottom_right),
// checked against a CPU reference and timed.
//
//   upsample   x (B, C, H, W) -> out (B, C, 2H, 2W), nearest
//   transpose  x (B, M, N) -> out (B, N, M)
//   concat     a (B, Ca, H, W), b (B, Cb, H, W) -> out (B, Ca + Cb, H, W)
//   pad        x (B, C, H, W) -> out (B, C, H + 1, W + 1), zeros below and to the right
//
//   /usr/local/cuda/bin/nvcc -O3 -std=c++17 -arch=sm_90 -Icsrc -Ikernels \
//       kernels/dev/layout.cu -o /tmp/layout && /tmp/layout
//
// Versions:
//   v1  naive: one thread per output element, its source worked out from the flat index
//       with 64-bit divisions, one 2- or 4-byte load and store.
//   op  kernels/layout.cu's entry points (included whole): 16-byte runs where the shape
//       allows them, tiled through shared memory for the transpose.
// The ops only move elements, so every output must equal the reference bit for bit.
// GB/s counts bytes read plus bytes written.
#include <random>

#include "dev/harness.cuh"

#include "../layout.cu" // the shipped file (not this one)

// layout.cu's embedding uploads ids into a workspace; the harness never calls it
sd_status cuda_scratch(cuda_scratch_slot, size_t, void **) {
    return SD_ERR_UNSUPPORTED;
}

enum op_kind { UPSAMPLE, TRANSPOSE, CONCAT, PAD };
static const char *op_name[] = {"upsample", "transpose", "concat", "pad"};

// B, C, H, W of x (transpose: B, M = C, N = H * W); C2 the channels of concat's b
struct layout_case {
    op_kind op;
    int B, C, H, W, C2;
    const char *what;
};

static int64_t out_numel(const layout_case &k) {
    int64_t B = k.B, C = k.C, H = k.H, W = k.W;
    switch (k.op) {
    case UPSAMPLE: return B * C * 4 * H * W;
    case TRANSPOSE: return B * C * H * W;
    case CONCAT: return B * (C + k.C2) * H * W;
    default: return B * C * (H + 1) * (W + 1);
    }
}

// The source of output element i: an index into x (or into b for concat, flagged by
// *from_b), or -1 for padding.
__host__ __device__ static int64_t source(const layout_case &k, int64_t i, bool *from_b) {
    int64_t H = k.H, W = k.W;
    *from_b = false;
    switch (k.op) {
    case UPSAMPLE: {
        int64_t ox = i % (2 * W), oy = i / (2 * W) % (2 * H), p = i / (4 * H * W);
        return (p * H + oy / 2) * W + ox / 2;
    }
    case TRANSPOSE: { // out (B, N, M) from x (B, M, N)
        int64_t M = k.C, N = H * W;
        int64_t m = i % M, n = i / M % N, b = i / (M * N);
        return (b * M + m) * N + n;
    }
    case CONCAT: {
        int64_t S = H * W, C = k.C + k.C2;
        int64_t s = i % S, c = i / S % C, b = i / (S * C);
        if (c < k.C)
            return (b * k.C + c) * S + s;
        *from_b = true;
        return (b * k.C2 + (c - k.C)) * S + s;
    }
    default: {
        int64_t ox = i % (W + 1), oy = i / (W + 1) % (H + 1), p = i / ((H + 1) * (W + 1));
        if (oy >= H || ox >= W)
            return -1;
        return (p * H + oy) * W + ox;
    }
    }
}

template <typename E>
static void layout_cpu(const layout_case &k, const std::vector<E> &x, const std::vector<E> &b,
                       std::vector<E> &out) {
    for (int64_t i = 0; i < (int64_t)out.size(); i++) {
        bool from_b;
        int64_t s = source(k, i, &from_b);
        out[i] = s < 0 ? E(0) : (from_b ? b[s] : x[s]);
    }
}

template <typename E>
__global__ void layout_v1_kernel(layout_case k, const E *x, const E *b, E *out, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    bool from_b;
    int64_t s = source(k, i, &from_b);
    out[i] = s < 0 ? E(0) : (from_b ? b[s] : x[s]);
}

enum version { V1, OP, VERSIONS };
static const char *version_name[VERSIONS] = {"v1", "op"};

template <typename E>
static sd_status run_version(version v, const layout_case &k, sd_dtype dt, const E *x, const E *b,
                             E *out) {
    int64_t n = out_numel(k);
    if (v == V1) {
        layout_v1_kernel<E><<<(unsigned)((n + 255) / 256), 256, 0, g_stream>>>(k, x, b, out, n);
        return cuda_launched("layout_v1_kernel");
    }
    sd_tensor tx = {(void *)x, dt, SD_CUDA, 4, {k.B, k.C, k.H, k.W}}, to = tx;
    to.data = out;
    switch (k.op) {
    case UPSAMPLE:
        to.shape[2] = 2 * k.H;
        to.shape[3] = 2 * k.W;
        return cuda_upsample_nearest2x(nullptr, &tx, &to);
    case TRANSPOSE:
        tx.ndim = to.ndim = 3;
        tx.shape[2] = (int64_t)k.H * k.W;
        tx.shape[3] = to.shape[3] = 1;
        to.shape[1] = tx.shape[2];
        to.shape[2] = k.C;
        return cuda_transpose_last2(nullptr, &tx, &to);
    case CONCAT: {
        sd_tensor tb = tx;
        tb.data = (void *)b;
        tb.shape[1] = k.C2;
        to.shape[1] = k.C + k.C2;
        return cuda_concat_channels(nullptr, &tx, &tb, &to);
    }
    default:
        to.shape[2] = k.H + 1;
        to.shape[3] = k.W + 1;
        return cuda_pad_bottom_right(nullptr, &tx, 1, 1, &to);
    }
}

// Returns the number of failed checks. E holds the raw bits of the dtype.
template <typename E> static int run_case(const layout_case &k, sd_dtype dt, const char *dtype) {
    int64_t nx = (int64_t)k.B * k.C * k.H * k.W, nb = (int64_t)k.B * k.C2 * k.H * k.W;
    int64_t n = out_numel(k);
    std::mt19937 gen(1234);
    std::vector<E> x(nx), b(nb > 0 ? nb : 1), ref(n), got(n);
    for (auto &e : x)
        e = (E)gen();
    for (auto &e : b)
        e = (E)gen();
    layout_cpu(k, x, b, ref);
    E *dx, *db, *dout;
    CHECK_CUDA(cudaMalloc(&dx, nx * sizeof(E)));
    CHECK_CUDA(cudaMalloc(&db, b.size() * sizeof(E)));
    CHECK_CUDA(cudaMalloc(&dout, n * sizeof(E)));
    CHECK_CUDA(cudaMemcpy(dx, x.data(), nx * sizeof(E), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(db, b.data(), b.size() * sizeof(E), cudaMemcpyHostToDevice));
    double bytes = (double)(nx + (k.op == CONCAT ? nb : 0) + n) * sizeof(E);
    int failures = 0;
    for (int v = 0; v < VERSIONS; v++) {
        // a pattern where nothing is written; on the op stream: a plain cudaMemset runs on the
        // legacy stream, which a non-blocking stream does not wait for
        CHECK_CUDA(cudaMemsetAsync(dout, 0x5a, n * sizeof(E), g_stream));
        if (run_version<E>((version)v, k, dt, dx, db, dout) != SD_OK) {
            std::printf("%-10s %-32s %-4s %-3s launch FAILED\n", op_name[k.op], k.what, dtype,
                        version_name[v]);
            failures++;
            continue;
        }
        CHECK_CUDA(cudaStreamSynchronize(g_stream));
        CHECK_CUDA(cudaMemcpy(got.data(), dout, n * sizeof(E), cudaMemcpyDeviceToHost));
        int64_t wrong = 0;
        for (int64_t i = 0; i < n; i++)
            wrong += got[i] != ref[i];
        failures += wrong != 0;
        float ms = time_ms([&] { run_version<E>((version)v, k, dt, dx, db, dout); });
        std::printf("%-10s %-32s %-4s %-3s %9.2f us %8.0f GB/s   %lld wrong %s\n", op_name[k.op],
                    k.what, dtype, version_name[v], ms * 1e3f, bytes / (ms * 1e-3) / 1e9,
                    (long long)wrong, wrong ? "FAILED" : "ok");
    }
    CHECK_CUDA(cudaFree(dx));
    CHECK_CUDA(cudaFree(db));
    CHECK_CUDA(cudaFree(dout));
    return failures;
}

int main() {
    harness_init();
    const layout_case cases[] = {
        {UPSAMPLE, 2, 1280, 8, 8, 0, "UNet (2, 1280, 8, 8)"},
        {UPSAMPLE, 2, 640, 32, 32, 0, "UNet (2, 640, 32, 32)"},
        {UPSAMPLE, 1, 512, 128, 128, 0, "VAE (1, 512, 128, 128)"},
        {UPSAMPLE, 1, 256, 256, 256, 0, "VAE (1, 256, 256, 256)"},
        {UPSAMPLE, 3, 5, 7, 9, 0, "odd (3, 5, 7, 9)"},
        {TRANSPOSE, 2, 320, 64, 64, 0, "UNet (2, 320, 4096) to tokens"},
        {TRANSPOSE, 2, 4096, 16, 20, 0, "UNet (2, 4096, 320) to channels"},
        {TRANSPOSE, 1, 512, 64, 64, 0, "VAE (1, 512, 4096)"},
        {TRANSPOSE, 2, 33, 5, 7, 0, "odd (2, 33, 35)"},
        {CONCAT, 2, 1280, 8, 8, 1280, "UNet (2, 1280+1280, 8, 8)"},
        {CONCAT, 2, 640, 64, 64, 320, "UNet (2, 640+320, 64, 64)"},
        {CONCAT, 2, 320, 64, 64, 320, "UNet (2, 320+320, 64, 64)"},
        {CONCAT, 1, 3, 5, 7, 2, "odd (1, 3+2, 5, 7)"},
        {PAD, 1, 128, 512, 512, 0, "VAE encoder (1, 128, 512, 512)"},
        {PAD, 1, 256, 256, 256, 0, "VAE encoder (1, 256, 256, 256)"},
        {PAD, 2, 3, 5, 7, 0, "odd (2, 3, 5, 7)"},
    };
    int failures = 0;
    for (const layout_case &k : cases) {
        failures += run_case<uint16_t>(k, SD_F16, "f16");
        failures += run_case<uint32_t>(k, SD_F32, "f32");
    }
    std::printf(failures ? "%d checks FAILED\n" : "all checks passed\n", failures);
    return failures ? 1 : 0;
}

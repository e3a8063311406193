// The element-wise ops (add and mul with their broadcasts, scale, convert) and the
// activations (silu, gelu, quick_gelu), checked against a CPU reference and timed.
//
//   add, mul   a (B, C, H, W) and b of a's shape, of its trailing (C, H, W), or (B, C)
//              per channel -> out like a
//   scale      out = x * s
//   convert    f32 -> f16 and f16 -> f32, rounding to nearest even
//   silu, gelu (erf and tanh), quick_gelu   out like x
//
//   /usr/local/cuda/bin/nvcc -O3 -std=c++17 -arch=sm_90 -Icsrc -Ikernels \
//       kernels/dev/elementwise.cu -o /tmp/elementwise && /tmp/elementwise
//
// Versions:
//   v1  naive: one thread per element, the broadcast index by 64-bit division, scalar
//       loads and stores.
//   op  the shipped entry points (kernels/elementwise.cu and kernels/activation.cu,
//       included whole): 16-byte packs, one division per pack for per-channel operands.
// add, mul, scale and convert are one f32 operation and one rounding: they must equal the
// reference bit for bit. The activations use erff/expf/tanhf: their largest error against
// a double reference, over the largest value, within a few f32 ulps (f16: half an f16 ulp
// more). GB/s counts bytes read and written.
#include <cmath>
#include <random>

#include "dev/harness.cuh"

// the shipped files (not this one); their internals live in unnamed namespaces, and
// each names its own helpers: wrap them apart
namespace shipped_elementwise {
#include "../elementwise.cu"
}
namespace shipped_activation {
#include "../activation.cu"
}

enum op_kind {
    ADD_SAME,
    ADD_TRAILING,
    ADD_CHANNEL,
    MUL_CHANNEL,
    SCALE,
    TO_F16,
    TO_F32,
    SILU,
    GELU,
    GELU_TANH,
    QUICK_GELU,
    OPS
};
static const char *op_name[OPS] = {"add",   "add trailing", "add channel", "mul channel",
                                   "scale", "f32 to f16",   "f16 to f32",  "silu",
                                   "gelu",  "gelu tanh",    "quick_gelu"};

static bool exact(op_kind op) {
    return op <= TO_F32;
}

// b's element for a's element i, a (B, C, S)
__host__ __device__ static int64_t b_index(op_kind op, int64_t i, int64_t C, int64_t S) {
    switch (op) {
    case ADD_SAME: return i;
    case ADD_TRAILING: return i % (C * S);
    default: return i / S; // (B, C): one value per image and channel
    }
}

__host__ __device__ static float act(op_kind op, float v) {
    switch (op) {
    case SILU: return v / (1.0f + expf(-v));
    case GELU: return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    case GELU_TANH:
        return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    default: return v / (1.0f + expf(-1.702f * v));
    }
}

static double act_ref(op_kind op, double v) {
    switch (op) {
    case SILU: return v / (1.0 + std::exp(-v));
    case GELU: return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
    case GELU_TANH:
        return 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
    default: return v / (1.0 + std::exp(-1.702 * v));
    }
}

static float to_host(float v) {
    return v;
}
static float to_host(__half v) {
    return __half2float(v);
}
template <typename T> static T from_host(float v);
template <> float from_host<float>(float v) {
    return v;
}
template <> __half from_host<__half>(float v) {
    return __float2half_rn(v);
}

// v1: S the source type, D the destination (they differ only for convert)
template <typename S, typename D>
__global__ void elementwise_v1_kernel(op_kind op, const S *a, const S *b, D *out, int64_t n,
                                      int64_t C, int64_t HW, float s) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    float x = to_f32(a[i]), y;
    switch (op) {
    case ADD_SAME:
    case ADD_TRAILING:
    case ADD_CHANNEL: y = x + to_f32(b[b_index(op, i, C, HW)]); break;
    case MUL_CHANNEL: y = x * to_f32(b[b_index(op, i, C, HW)]); break;
    case SCALE: y = x * s; break;
    case TO_F16:
    case TO_F32: y = x; break;
    default: y = act(op, x);
    }
    out[i] = from_f32<D>(y);
}

struct ew_case {
    op_kind op;
    int B, C, H, W;
    const char *what;
};

static sd_dtype dtype_of(float) {
    return SD_F32;
}
static sd_dtype dtype_of(__half) {
    return SD_F16;
}

template <typename S, typename D>
static sd_status run_op(const ew_case &k, const S *a, const S *b, D *out, float s) {
    using namespace shipped_elementwise;
    using namespace shipped_activation;
    sd_tensor ta = {(void *)a, dtype_of(S()), SD_CUDA, 4, {k.B, k.C, k.H, k.W}}, tb = ta, to = ta;
    tb.data = (void *)b;
    to.data = out;
    to.dtype = dtype_of(D());
    if (k.op == ADD_TRAILING) {
        tb.ndim = 3;
        tb.shape[0] = k.C, tb.shape[1] = k.H, tb.shape[2] = k.W, tb.shape[3] = 1;
    } else if (k.op == ADD_CHANNEL || k.op == MUL_CHANNEL) {
        tb.ndim = 2;
        tb.shape[2] = tb.shape[3] = 1;
    }
    switch (k.op) {
    case ADD_SAME:
    case ADD_TRAILING:
    case ADD_CHANNEL: return shipped_elementwise::cuda_add(nullptr, &ta, &tb, &to);
    case MUL_CHANNEL: return shipped_elementwise::cuda_mul(nullptr, &ta, &tb, &to);
    case SCALE: return shipped_elementwise::cuda_scale(nullptr, &ta, s, &to);
    case TO_F16:
    case TO_F32: return shipped_elementwise::cuda_convert(nullptr, &ta, &to);
    case SILU: return shipped_activation::cuda_silu(nullptr, &ta, &to);
    case GELU: return shipped_activation::cuda_gelu(nullptr, &ta, 0, &to);
    case GELU_TANH: return shipped_activation::cuda_gelu(nullptr, &ta, 1, &to);
    default: return shipped_activation::cuda_quick_gelu(nullptr, &ta, &to);
    }
}

// Returns the number of failed checks.
template <typename S, typename D> static int run_case(const ew_case &k, const char *dtype) {
    int64_t HW = (int64_t)k.H * k.W, n = (int64_t)k.B * k.C * HW;
    int64_t nb = k.op == ADD_SAME ? n : k.op == ADD_TRAILING ? k.C * HW : (int64_t)k.B * k.C;
    const float s = 0.7071f;
    std::mt19937 gen(1234);
    std::normal_distribution<float> normal(0.0f, 2.0f);
    std::vector<S> a(n), b(nb);
    std::vector<D> got(n);
    std::vector<double> ref(n);
    for (auto &e : a)
        e = from_host<S>(normal(gen));
    for (auto &e : b)
        e = from_host<S>(normal(gen));
    for (int64_t i = 0; i < n; i++) {
        float x = to_host(a[i]);
        switch (k.op) {
        case ADD_SAME:
        case ADD_TRAILING:
        case ADD_CHANNEL:
            ref[i] = to_host(from_host<D>(x + to_host(b[b_index(k.op, i, k.C, HW)])));
            break;
        case MUL_CHANNEL:
            ref[i] = to_host(from_host<D>(x * to_host(b[b_index(k.op, i, k.C, HW)])));
            break;
        case SCALE: ref[i] = to_host(from_host<D>(x * s)); break;
        case TO_F16:
        case TO_F32: ref[i] = to_host(from_host<D>(x)); break;
        default: ref[i] = act_ref(k.op, x);
        }
    }
    S *da, *db;
    D *dout;
    CHECK_CUDA(cudaMalloc(&da, n * sizeof(S)));
    CHECK_CUDA(cudaMalloc(&db, nb * sizeof(S)));
    CHECK_CUDA(cudaMalloc(&dout, n * sizeof(D)));
    CHECK_CUDA(cudaMemcpy(da, a.data(), n * sizeof(S), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(db, b.data(), nb * sizeof(S), cudaMemcpyHostToDevice));
    bool binary = k.op <= MUL_CHANNEL;
    double bytes = (double)n * (sizeof(S) + sizeof(D)) + (binary ? (double)nb * sizeof(S) : 0);
    int failures = 0;
    for (int v = 0; v < 2; v++) {
        auto run = [&]() -> sd_status {
            if (v == 1)
                return run_op<S, D>(k, da, db, dout, s);
            elementwise_v1_kernel<S, D><<<(unsigned)((n + 255) / 256), 256, 0, g_stream>>>(
                k.op, da, db, dout, n, k.C, HW, s);
            return cuda_launched("elementwise_v1_kernel");
        };
        // NaN where nothing is written, on the op stream (see harness.cuh's users)
        CHECK_CUDA(cudaMemsetAsync(dout, 0xff, n * sizeof(D), g_stream));
        if (run() != SD_OK) {
            std::printf("%-12s %-26s %-4s %-3s launch FAILED\n", op_name[k.op], k.what, dtype,
                        v ? "op" : "v1");
            failures++;
            continue;
        }
        CHECK_CUDA(cudaStreamSynchronize(g_stream));
        CHECK_CUDA(cudaMemcpy(got.data(), dout, n * sizeof(D), cudaMemcpyDeviceToHost));
        // exact ops: bit for bit; activations: the largest error over the largest value
        // (their formulas lose relative accuracy where the output is tiny: gelu of -6 is
        // 0.5 x (1 + erf(-4.2)), a cancellation, in PyTorch's and the CPU's f32 alike)
        int64_t wrong = 0;
        double worst = 0.0, largest = 0.0;
        for (int64_t i = 0; i < n; i++) {
            double g = to_host(got[i]);
            largest = std::max(largest, std::fabs(ref[i]));
            if (exact(k.op))
                wrong += !(g == ref[i]);
            else
                worst = std::isnan(g) ? INFINITY : std::max(worst, std::fabs(g - ref[i]));
        }
        worst /= std::max(largest, 1e-30);
        // f32: a few ulps of the largest value; f16: half an f16 ulp of rounding on top
        bool ok = exact(k.op) ? wrong == 0 : worst <= (sizeof(D) == 4 ? 5e-7 : 6e-4);
        failures += !ok;
        float ms = time_ms([&] { run(); });
        std::printf("%-12s %-26s %-4s %-3s %9.2f us %8.0f GB/s   ", op_name[k.op], k.what, dtype,
                    v ? "op" : "v1", ms * 1e3f, bytes / (ms * 1e-3) / 1e9);
        if (exact(k.op))
            std::printf("%lld wrong %s\n", (long long)wrong, ok ? "ok" : "FAILED");
        else
            std::printf("max err %.2e %s\n", worst, ok ? "ok" : "FAILED");
    }
    CHECK_CUDA(cudaFree(da));
    CHECK_CUDA(cudaFree(db));
    CHECK_CUDA(cudaFree(dout));
    return failures;
}

int main() {
    harness_init();
    const ew_case cases[] = {
        {ADD_SAME, 2, 320, 64, 64, "UNet (2, 320, 64, 64)"},
        {ADD_SAME, 1, 128, 512, 512, "VAE (1, 128, 512, 512)"},
        {ADD_TRAILING, 2, 1, 77, 768, "CLIP positions (2, 77, 768)"},
        {ADD_CHANNEL, 2, 1280, 16, 16, "UNet temb (2, 1280, 16, 16)"},
        {MUL_CHANNEL, 2, 640, 32, 32, "(2, 640, 32, 32)"},
        {SCALE, 2, 320, 64, 64, "UNet (2, 320, 64, 64)"},
        {SILU, 2, 1280, 1, 1, "temb (2, 1280)"},
        {SILU, 2, 320, 64, 64, "(2, 320, 64, 64)"},
        {GELU, 2, 4096, 1, 1280, "(2, 4096, 1280)"},
        {GELU_TANH, 2, 4096, 1, 1280, "(2, 4096, 1280)"},
        {QUICK_GELU, 2, 77, 1, 3072, "CLIP MLP (2, 77, 3072)"},
        {ADD_SAME, 3, 5, 7, 9, "odd (3, 5, 7, 9)"},
        {ADD_CHANNEL, 3, 5, 7, 9, "odd (3, 5, 7, 9)"},
        {SILU, 3, 5, 7, 9, "odd (3, 5, 7, 9)"},
    };
    int failures = 0;
    for (const ew_case &k : cases) {
        failures += run_case<float, float>(k, "f32");
        failures += run_case<__half, __half>(k, "f16");
    }
    const ew_case converts[] = {
        {TO_F16, 2, 4, 64, 64, "latents (2, 4, 64, 64)"},
        {TO_F16, 2, 77, 1, 768, "context (2, 77, 768)"},
        {TO_F16, 3, 5, 7, 9, "odd (3, 5, 7, 9)"},
    };
    for (ew_case k : converts) {
        failures += run_case<float, __half>(k, "f32");
        k.op = TO_F32;
        failures += run_case<__half, float>(k, "f16");
    }
    std::printf(failures ? "%d checks FAILED\n" : "all checks passed\n", failures);
    return failures ? 1 : 0;
}

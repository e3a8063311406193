"""sdcore.random against torch.randn with torch.Generator("cpu"): bit for bit, no tolerance.

Every comparison is of the raw bit patterns (stricter than np.array_equal, which would
let -0.0 equal 0.0). Seeds are fresh each run; failure messages print them.
"""

import os
import random
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

from sdcore import _C
from sdcore.random import Generator, randn

RUN_SEED = int.from_bytes(os.urandom(8), "little")
rand = random.Random(RUN_SEED)

NAMED_SEEDS = [0, 1, 42, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1, -1, -(2**63), -12345]
SD_LATENT_SHAPES = [(1, 4, 64, 64), (2, 4, 64, 64), (4, 4, 96, 64), (1, 4, 16, 16)]
ODD_SHAPES = [
    (),
    (1,),
    (0,),
    (4, 0, 2),
    (3, 5),
    (3, 5, 7),
    (2, 3, 1, 5),
    (1, 1, 1, 16),
    (33, 33),
    (17, 1),
    (2, 2, 2, 2, 2),
    (1, 2, 1, 2, 1, 2, 1, 3),
    (1000,),
    (4097,),
]


def torch_gen(seed):
    return torch.Generator("cpu").manual_seed(seed)


def torch_randn(shape, gen, dtype=torch.float32):
    return torch.randn(shape, generator=gen, dtype=dtype).numpy()


def assert_bits_equal(ours, ref, what):
    assert ours.dtype == ref.dtype, f"{what}: dtype {ours.dtype} != {ref.dtype}"
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    assert ours.flags.c_contiguous, what
    uint = np.uint32 if ref.dtype == np.float32 else np.uint64
    a, b = ours.reshape(-1).view(uint), ref.reshape(-1).view(uint)
    if not np.array_equal(a, b):
        bad = np.flatnonzero(a != b)
        i = bad[0]
        raise AssertionError(
            f"{what} (run seed {RUN_SEED}): {bad.size} of {b.size} values differ; first at "
            f"flat index {i}: {ours.reshape(-1)[i]!r} vs torch {ref.reshape(-1)[i]!r}"
        )


@pytest.mark.parametrize("seed", NAMED_SEEDS)
def test_named_seeds_every_size_to_40(seed):
    for n in range(1, 41):
        assert_bits_equal(randn(n, seed), torch_randn(n, torch_gen(seed)), f"seed {seed}, n {n}")


def test_initial_seed_matches_torch():
    for seed in NAMED_SEEDS:
        assert Generator(seed).initial_seed() == torch_gen(seed).initial_seed(), seed


def test_fresh_random_seeds_and_odd_shapes():
    for _ in range(60):
        seed = rand.randrange(-(2**63), 2**64)
        shape = rand.choice(ODD_SHAPES + [(rand.randint(1, 40),), (rand.randint(41, 3000),)])
        assert_bits_equal(
            randn(shape, seed), torch_randn(shape, torch_gen(seed)), f"seed {seed}, shape {shape}"
        )


@pytest.mark.parametrize("shape", SD_LATENT_SHAPES)
def test_sd_latent_shapes(shape):
    for seed in (rand.randrange(2**64), rand.randrange(2**32)):
        assert_bits_equal(
            randn(shape, seed), torch_randn(shape, torch_gen(seed)), f"seed {seed}, shape {shape}"
        )


def test_consecutive_draws_fixed_sequence():
    """The draws of a sampler: small and large mixed, the cached normal carried over."""
    seed = rand.randrange(2**64)
    sizes = [3, (1, 4, 8, 8), 17, 5, 1, 1, 16, (2, 4, 8, 8), 15, 2, (0,), 1, 31, 7, 33, 1]
    ours, ref = Generator(seed), torch_gen(seed)
    for k, shape in enumerate(sizes):
        assert_bits_equal(
            ours.randn(shape), torch_randn(shape, ref), f"seed {seed}, draw {k} of shape {shape}"
        )


def test_consecutive_draws_random_sequences():
    for _ in range(10):
        seed = rand.randrange(-(2**63), 2**64)
        ours, ref = Generator(seed), torch_gen(seed)
        for k in range(30):
            shape = rand.choice(
                [(rand.randint(1, 40),), (rand.randint(1, 600),), (2, 3, 5), (1, 4, 16, 16), ()]
            )
            assert_bits_equal(
                ours.randn(shape),
                torch_randn(shape, ref),
                f"seed {seed}, draw {k} of shape {shape}",
            )


def test_ancestral_sampler_pattern():
    """Initial latents, then one noise draw per step, on the same generator."""
    seed = rand.randrange(2**64)
    shape = (1, 4, 64, 64)
    ours, ref = Generator(seed), torch_gen(seed)
    for step in range(12):
        assert_bits_equal(ours.randn(shape), torch_randn(shape, ref), f"seed {seed}, step {step}")


def test_float64_and_mixed_dtypes():
    seed = rand.randrange(2**64)
    for n in list(range(1, 41)) + [1000, 4099]:
        assert_bits_equal(
            randn(n, seed, np.float64),
            torch_randn(n, torch_gen(seed), torch.float64),
            f"seed {seed}, n {n}",
        )
    # both dtypes share the mt19937 stream and the cached double normal
    ours, ref = Generator(seed), torch_gen(seed)
    for k, (n, dt) in enumerate(
        [
            (3, "float32"),
            (5, "float64"),
            (20, "float64"),
            (1, "float32"),
            (17, "float32"),
            (1, "float64"),
            (100, "float32"),
        ]
    ):
        tdt = torch.float32 if dt == "float32" else torch.float64
        assert_bits_equal(
            ours.randn(n, dt), torch_randn(n, ref, tdt), f"seed {seed}, draw {k} n {n} {dt}"
        )


def test_manual_seed_restarts_and_drops_cached_normal():
    seed = rand.randrange(2**64)
    ours, ref = Generator(7), torch_gen(7)
    ours.randn(3), torch_randn(3, ref)  # an odd small draw leaves a cached normal
    assert ours.manual_seed(seed) is ours
    ref.manual_seed(seed)
    for shape in [1, 1, 20, 3]:
        assert_bits_equal(ours.randn(shape), torch_randn(shape, ref), f"seed {seed}, {shape}")
    assert ours.initial_seed() == ref.initial_seed()


def test_empty_draw_consumes_nothing():
    seed = rand.randrange(2**64)
    ours, ref = Generator(seed), torch_gen(seed)
    for shape in [1, (0,), (3, 0), 2, (0, 5), 20]:
        assert_bits_equal(ours.randn(shape), torch_randn(shape, ref), f"seed {seed}, {shape}")


def test_numpy_int_arguments():
    seed = rand.randrange(2**63)
    expect = torch_randn((2, 3), torch_gen(seed))
    assert_bits_equal(randn((np.int64(2), np.int32(3)), np.uint64(seed)), expect, "numpy ints")
    assert_bits_equal(randn([2, 3], seed), expect, "list shape")


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 10**30])
def test_seed_out_of_range(seed):
    with pytest.raises(ValueError, match="seed"):
        Generator(seed)
    with pytest.raises(ValueError, match="seed"):
        randn(3, seed)
    with pytest.raises(ValueError, match="seed"):
        Generator(0).manual_seed(seed)


@pytest.mark.parametrize("seed", [1.5, 2.0, True, "3", None, [1]])
def test_seed_wrong_type(seed):
    with pytest.raises(TypeError, match="seed"):
        Generator(seed)
    with pytest.raises(TypeError, match="seed"):
        randn(3, seed)


@pytest.mark.parametrize("shape", [-1, (-1,), (2, -3), (1 << 40, 1 << 40)])
def test_bad_shape_value(shape):
    with pytest.raises(ValueError, match="shape"):
        randn(shape, 0)
    with pytest.raises(ValueError, match="shape"):
        Generator(0).randn(shape)


@pytest.mark.parametrize("shape", ["abc", (2.0,), 2.5, None, (True,), ((2,),)])
def test_bad_shape_type(shape):
    with pytest.raises(TypeError, match="shape"):
        randn(shape, 0)


def test_too_many_dims():
    with pytest.raises(ValueError, match="dims"):
        randn((1,) * 65, 0)


def test_bad_dtype_and_kernel():
    with pytest.raises(TypeError, match="dtype"):
        randn(3, 0, np.float16)
    with pytest.raises(TypeError, match="dtype"):
        Generator(0).randn(3, "int32")
    with pytest.raises(ValueError, match="kernel"):
        Generator(0, kernel="sse")
    with pytest.raises(ValueError, match="kernel"):
        randn(3, 0, kernel="")


def test_auto_kernel_follows_torch_capability():
    cap = torch.backends.cpu.get_cpu_capability()
    expect = "avx2" if cap in ("AVX2", "AVX512") else "scalar"
    assert Generator(0).kernel == expect, f"torch capability {cap}"
    assert Generator(0, kernel="avx2").kernel == "avx2"
    assert Generator(0, kernel="scalar").kernel == "scalar"


def test_kernels_differ_only_in_large_float32_draws():
    seed = rand.randrange(2**64)
    for shape in [(15,), (15,), (3, 4)]:
        assert_bits_equal(
            randn(shape, seed, kernel="avx2"),
            randn(shape, seed, kernel="scalar"),
            f"seed {seed}, small draw {shape}",
        )
    assert_bits_equal(
        randn(100, seed, "float64", kernel="avx2"),
        randn(100, seed, "float64", kernel="scalar"),
        f"seed {seed}, float64",
    )
    a, b = randn((1, 4, 64, 64), seed, kernel="avx2"), randn((1, 4, 64, 64), seed, kernel="scalar")
    assert not np.array_equal(a, b)
    assert np.abs(a - b).max() < 1e-5


TORCH_IN_SUBPROCESS = textwrap.dedent("""
    import sys, numpy as np, torch
    from sdcore import _C
    out = {"auto_kernel": np.array(_C.Generator(0).kernel)}
    for k, seed in enumerate(int(s) for s in sys.argv[2:]):
        g = torch.Generator("cpu").manual_seed(seed)
        for j, n in enumerate([17, 40, 4096 + 9, 3]):
            out[f"{k}_{j}"] = torch.randn(n, generator=g).numpy()
    np.savez(sys.argv[1], **out)
""")


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_each_kernel_matches_torch_capability(capability, tmp_path):
    """Both kernels against torch itself, run with ATEN_CPU_CAPABILITY forcing its kernel
    (an AVX-512 torch runs the AVX2 normal kernel: it registers no AVX-512 one)."""
    native = torch.backends.cpu.get_cpu_capability()
    if capability == "avx2" and native not in ("AVX2", "AVX512"):
        pytest.skip("this CPU cannot run torch's AVX2 kernels")
    if capability == "avx512" and native != "AVX512":
        pytest.skip("this CPU cannot run torch's AVX-512 kernels")
    seeds = [rand.randrange(2**64) for _ in range(4)]
    path = tmp_path / "ref.npz"
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    subprocess.run(
        [sys.executable, "-c", TORCH_IN_SUBPROCESS, str(path), *map(str, seeds)],
        env=env,
        check=True,
        # outside the checkout, so the installed sdcore is the one imported
        cwd=tmp_path,
    )
    ref = np.load(path)
    kernel = "scalar" if capability == "default" else "avx2"
    assert str(ref["auto_kernel"]) == kernel, "kernel='auto' must follow ATEN_CPU_CAPABILITY"
    for k, seed in enumerate(seeds):
        gen = Generator(seed, kernel=kernel)
        for j, n in enumerate([17, 40, 4096 + 9, 3]):
            assert_bits_equal(
                gen.randn(n), ref[f"{k}_{j}"], f"kernel {kernel}, seed {seed}, draw {j} (n {n})"
            )


def test_threads_with_own_generators():
    shapes = [3, (1, 4, 64, 64), 17, 5, (2, 4, 32, 32), 1, 40]
    seeds = [rand.randrange(2**64) for _ in range(8)]
    expected = []
    for seed in seeds:
        g = torch_gen(seed)
        expected.append([torch_randn(s, g) for _ in range(3) for s in shapes])
    results = [None] * len(seeds)
    start = threading.Barrier(len(seeds))

    def work(i):
        gen = Generator(seeds[i])
        start.wait()
        results[i] = [gen.randn(s) for _ in range(3) for s in shapes]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(seeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, seed in enumerate(seeds):
        assert results[i] is not None, f"thread {i} failed"
        for k, (a, b) in enumerate(zip(results[i], expected[i], strict=True)):
            assert_bits_equal(a, b, f"thread {i}, seed {seed}, draw {k}")


def test_shared_generator_between_threads_stays_consistent():
    """Draws from one Generator in several threads are serialised: together they use the
    stream exactly as the same draws made one after another would (in some order)."""
    seed = rand.randrange(2**64)
    gen = Generator(seed)
    out = []
    lock = threading.Lock()

    def work():
        for _ in range(20):
            a = gen.randn(256)
            with lock:
                out.append(a)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ref = torch_gen(seed)
    expected = {torch_randn(256, ref).tobytes() for _ in range(80)}
    assert {a.tobytes() for a in out} == expected, f"seed {seed}"


def test_c_module_names():
    assert isinstance(_C.Generator(1), _C.Generator)
    assert _C.Generator(5).manual_seed(-1).initial_seed() == 2**64 - 1
    assert repr(Generator(3)).startswith("Generator(initial_seed=3")

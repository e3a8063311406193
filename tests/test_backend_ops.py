"""The backend comparison runner (tests/c/backend_ops.c), built with make and run here.

--cpu-only runs every op of the backend table on the CPU backend against the
double-precision references written in the runner, on fresh random inputs (the seed
comes from the rng fixture, so a failure names it). --cpu-as-device runs the GPU run's
comparisons with the CPU backend in the device's place, so the code path the GPU
machine takes (tools/gpu_backend_ops.sh) is exercised without a GPU. --perturb shows
that a wrong result does fail.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_C = os.path.join(ROOT, "tests", "c")
RUNNER = os.path.join(TESTS_C, "backend_ops")

# every op of struct sd_backend in csrc/sdcore.h but the memory entries (alloc, free,
# upload, download, synchronize: every line uses them) and the graph entries (the
# "graph" line); sampler_op has no double reference in the runner
TABLE_OPS = {
    "linear",
    "linear_add",
    "matmul",
    "conv2d",
    "conv2d_add",
    "group_norm",
    "layer_norm",
    "attention",
    "softmax",
    "gelu",
    "quick_gelu",
    "silu",
    "geglu",
    "upsample_nearest2x",
    "concat_channels",
    "add",
    "mul",
    "scale",
    "convert",
    "timestep_embedding",
    "transpose_last2",
    "embedding",
    "pad_bottom_right",
    "copy",
    "graph",
}
LINE = re.compile(r"^(\w+)\s.*\s(OK|FAIL)\s")


@pytest.fixture(scope="module")
def runner():
    """Build tests/c/backend_ops (and libsdcore.a) with make; skip without make or cc."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed: the runner is built with make")
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler (cc) to build the runner with")
    cmd = ["make", "-C", TESTS_C, f"-j{os.cpu_count() or 1}", f"PYTHON={sys.executable}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return RUNNER


def run(runner, *args):
    return subprocess.run([runner, *args], capture_output=True, text=True, timeout=600)


def results(stdout):
    """{op: [OK or FAIL, ...]} of the runner's table."""
    found = {}
    for line in stdout.splitlines():
        m = LINE.match(line)
        if m:
            found.setdefault(m.group(1), []).append(m.group(2))
    return found


def seed_of(rng):
    return str(int(rng.integers(1, 2**63)))


def test_cpu_only_every_op_within_bounds(runner, rng):
    done = run(runner, "--cpu-only", "--seed", seed_of(rng))
    assert done.returncode == 0, done.stdout + done.stderr
    found = results(done.stdout)
    assert set(found) == TABLE_OPS, f"ops without a line: {TABLE_OPS - set(found)}"
    assert all(r == "OK" for rs in found.values() for r in rs), done.stdout
    assert re.search(r"^\d+ OK, 0 FAIL, \d+ skipped", done.stdout, re.M), done.stdout


def test_gpu_comparisons_with_the_cpu_standing_in(runner, rng):
    # the comparisons of the GPU run, float32, the sampler ops included
    done = run(runner, "--cpu-as-device", "--seed", seed_of(rng), "--reps", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    found = results(done.stdout)
    assert set(found) == TABLE_OPS | {"sampler_op"}, done.stdout
    assert all(r == "OK" for rs in found.values() for r in rs), done.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--cpu-only", "--op", "group_norm"],  # a bounded op
        ["--cpu-only", "--op", "add"],  # an exact one
        ["--cpu-as-device", "--op", "sampler_op"],  # bit for bit against the CPU
    ],
    ids=["bounded", "exact", "sampler"],
)
def test_a_wrong_result_fails(runner, rng, args):
    op = args[-1]
    done = run(runner, *args, "--perturb", op, "--seed", seed_of(rng))
    assert done.returncode == 1, done.stdout + done.stderr
    found = results(done.stdout)
    assert found.get(op) and all(r == "FAIL" for r in found[op]), done.stdout


def test_without_a_gpu_says_why_and_skips(runner, tmp_path):
    # no libsdcore_cuda.so in an empty directory: the loader's reason, exit status 0
    done = run(runner, "--lib-dir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("no CUDA device: "), done.stdout
    assert "libsdcore_cuda.so" in done.stdout and "SKIP" in done.stdout


def test_bad_arguments_are_refused(runner):
    done = run(runner, "--reps", "0")
    assert done.returncode == 2 and "'--reps'" in done.stderr
    done = run(runner, "--cpu-only", "--op", "no_such_op")
    assert done.returncode == 2 and "no op matched" in done.stderr

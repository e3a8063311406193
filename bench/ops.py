"""Time each CPU op at SD 1.5 shapes beside PyTorch (float32, same machine, same run).

    python bench/ops.py [--repeat N] [--only NAME ...]

Prints a table: milliseconds for sdcore and torch, and the ratio sdcore/torch (below
1.0 means sdcore is faster). Both use every core (torch its default thread count,
sdcore its OpenMP default) unless --threads sets both.

The two sides alternate call by call, so drift in the machine's load hits both alike.
Each side's time is the best of the repeats, and `ratio` divides those: on a shared
machine the best is the run that got the cores, where a median measures the other
jobs. `med ratio` is the median of the per-repeat ratios (sdcore's call over torch's
call that followed it), a second view that should agree when the figures mean something.

With --threads 1 both run on the calling thread, and --clock thread times them by that
thread's CPU time: time the scheduler gave to other jobs is not counted, so the ratios
hold on a machine shared with others (wall time there measures the queue).
"""

import argparse
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from sdcore import _C, ops


def call_ms(fn, clock):
    t0 = clock()
    fn()
    return (clock() - t0) * 1e3


def compare_ms(ours, theirs, repeat, clock=time.perf_counter):
    """(best ms of ours, best ms of theirs, median of the paired ratios), calls alternating."""
    ours()
    theirs()
    pairs = [(call_ms(ours, clock), call_ms(theirs, clock)) for _ in range(repeat)]
    best_ours = min(p[0] for p in pairs)
    best_theirs = min(p[1] for p in pairs)
    return best_ours, best_theirs, statistics.median(p[0] / p[1] for p in pairs)


def cases(rng):
    """(name, sdcore call, torch call) at the shapes SD 1.5 runs at 512x512, CFG batch 2."""

    def r(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    x = r(2, 320, 64, 64)
    w3 = r(320, 320, 3, 3, scale=0.02)
    b320 = r(320)
    tx, tw3, tb = map(torch.from_numpy, (x, w3, b320))
    yield (
        "conv2d 3x3 (2,320,64,64)->320",
        lambda: ops.conv2d(x, w3, b320, padding=1),
        lambda: F.conv2d(tx, tw3, tb, padding=1),
    )
    w1 = r(320, 640, 1, 1, scale=0.03)
    x640 = r(2, 640, 32, 32)
    t640, tw1 = torch.from_numpy(x640), torch.from_numpy(w1)
    yield (
        "conv2d 1x1 (2,640,32,32)->320",
        lambda: ops.conv2d(x640, w1, b320),
        lambda: F.conv2d(t640, tw1, tb),
    )
    a, wl, bl = r(8192, 320), r(1280, 320, scale=0.05), r(1280)
    ta, twl, tbl = map(torch.from_numpy, (a, wl, bl))
    yield (
        "linear 8192x320 @ 320x1280",
        lambda: ops.linear(a, wl, bl),
        lambda: F.linear(ta, twl, tbl),
    )
    # 16 head-batches: B=2 x 8 heads, 4096 tokens, head dim 40
    q, k, v = r(2, 4096, 320), r(2, 4096, 320), r(2, 4096, 320)

    def heads(t, T):
        return torch.from_numpy(t).view(2, T, 8, 40).transpose(1, 2)

    tq, tk, tv = heads(q, 4096), heads(k, 4096), heads(v, 4096)
    yield (
        "attention 16x4096x4096 d40",
        lambda: ops.attention(q, k, v, 8),
        lambda: F.scaled_dot_product_attention(tq, tk, tv).transpose(1, 2).reshape(2, 4096, 320),
    )
    kc, vc = r(2, 77, 320), r(2, 77, 320)
    tkc, tvc = heads(kc, 77), heads(vc, 77)
    yield (
        "attention 16x4096x77 d40 (cross)",
        lambda: ops.attention(q, kc, vc, 8),
        lambda: F.scaled_dot_product_attention(tq, tkc, tvc).transpose(1, 2).reshape(2, 4096, 320),
    )
    g = r(320)
    tg = torch.from_numpy(g)
    yield (
        "group_norm (2,320,64,64) G32",
        lambda: ops.group_norm(x, g, b320, 32),
        lambda: F.group_norm(tx, 32, tg, tb),
    )
    yield (
        "group_norm+silu (2,320,64,64)",
        lambda: ops.group_norm(x, g, b320, 32, silu=True),
        lambda: F.silu(F.group_norm(tx, 32, tg, tb)),
    )
    h = r(2, 4096, 320)
    th = torch.from_numpy(h)
    yield (
        "layer_norm (2,4096,320)",
        lambda: ops.layer_norm(h, g, b320),
        lambda: F.layer_norm(th, (320,), tg, tb),
    )
    ff = r(2, 4096, 2560)
    tff = torch.from_numpy(ff)
    yield (
        "geglu (2,4096,2560)",
        lambda: ops.geglu(ff),
        lambda: (lambda p: p[0] * F.gelu(p[1]))(tff.chunk(2, dim=-1)),
    )
    yield ("silu (2,320,64,64)", lambda: ops.silu(x), lambda: F.silu(tx))
    xs = r(2, 1280, 32, 32)
    txs = torch.from_numpy(xs)
    yield (
        "upsample 2x (2,1280,32,32)",
        lambda: ops.upsample_nearest2x(xs),
        lambda: F.interpolate(txs, scale_factor=2.0, mode="nearest"),
    )
    y = r(2, 320, 64, 64)
    ty = torch.from_numpy(y)
    yield ("add (2,320,64,64)", lambda: ops.add(x, y), lambda: tx + ty)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--only", nargs="*", help="substrings of case names to run")
    parser.add_argument("--threads", type=int, help="threads for both sides (default: all)")
    parser.add_argument(
        "--clock",
        choices=["wall", "thread"],
        default="wall",
        help="wall time, or the calling thread's CPU time (needs --threads 1)",
    )
    args = parser.parse_args()
    if args.clock == "thread" and args.threads != 1:
        parser.error("--clock thread counts one thread's CPU time: it needs --threads 1")
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
        _C.set_cpu_threads(args.threads)
    rng = np.random.default_rng(0)
    print(
        f"cores: {os.cpu_count()}, torch {torch.__version__} threads {torch.get_num_threads()}, "
        f"sdcore threads {_C.build_info()['cpu_threads']}, clock {args.clock}"
    )
    # run as `python bench/ops.py`, sdcore comes from the installed copy, which may not be
    # this checkout's build (PYTHONPATH=. measures the checkout)
    print(f"sdcore from {os.path.dirname(_C.__file__)}")
    print(f"{'op':36s} {'sdcore ms':>10s} {'torch ms':>10s} {'ratio':>7s} {'med ratio':>9s}")
    with torch.inference_mode():
        for name, ours, theirs in cases(rng):
            if args.only and not any(s in name for s in args.only):
                continue
            t_ours, t_torch, med = compare_ms(ours, theirs, args.repeat, clock)
            print(
                f"{name:36s} {t_ours:10.2f} {t_torch:10.2f} {t_ours / t_torch:7.2f} {med:9.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()

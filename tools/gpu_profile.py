"""Where the time of one UNet step or one VAE decode goes, kernel by kernel, on a GPU.

    python tools/gpu_profile.py build FOLDER              # random SD 1.5 (f16) saved there
    ncu --nvtx --nvtx-include "measure/" --metrics gpu__time_duration.sum --csv --page raw \
        --log-file K.csv python tools/gpu_profile.py run FOLDER sdcore unet
    python tools/gpu_profile.py summary K.csv             # table of kernels by total time

`run` does one warm-up call, then the measured call inside the NVTX range "measure", so
only that call's kernels are profiled. sdcore runs without CUDA graphs here (ncu sees the
same kernels either way). `bash tools/gpu_profile.sh` does all of it for sdcore and
diffusers (eager), UNet and VAE.
"""

import csv
import os
import sys
from collections import defaultdict

import numpy as np


def build(folder):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    import gpu

    gpu.build_models(folder)


def run(folder, who, what):
    import torch

    rng = np.random.default_rng(0)
    sample = rng.standard_normal((2, 4, 64, 64)).astype(np.float32)
    ts = np.full(2, 500.0, np.float32)
    ctx = rng.standard_normal((2, 77, 768)).astype(np.float32)
    z = rng.standard_normal((1, 4, 64, 64)).astype(np.float32)
    if who == "sdcore":
        import sdcore

        pipe = sdcore.Pipeline.from_pretrained(folder, device="cuda")
        pipe.unet.use_graphs(False)
        fn = {
            "unet": lambda: pipe.unet.forward(sample, ts, ctx),
            "vae": lambda: pipe.vae.decode(z),
        }[what]
    else:
        import diffusers

        dev = lambda a: torch.from_numpy(a).cuda().half()  # noqa: E731
        if what == "unet":
            m = diffusers.UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"))
            m = m.half().cuda().eval()
            s, t, c = dev(sample), torch.from_numpy(ts).cuda(), dev(ctx)
            fn = lambda: m(s, t, c)  # noqa: E731
        else:
            m = diffusers.AutoencoderKL.from_pretrained(os.path.join(folder, "vae"))
            m = m.half().cuda().eval()
            zz = dev(z)
            fn = lambda: m.decode(zz)  # noqa: E731
    with torch.inference_mode():
        fn()
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_push("measure")
        fn()
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_pop()


def short(name):
    """A kernel's name without its template arguments and parameter list."""
    depth, outer = 0, []
    for ch in name:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        elif depth == 0:
            outer.append(ch)
    s = "".join(outer).strip()
    s = s.replace("void ", "")
    return s[:90] or name[:90]


def summary(path):
    with open(path) as f:
        lines = [ln for ln in f if ln.startswith('"')]
    rows = list(csv.reader(lines))
    if len(rows) < 3:
        print(f"{path}: no kernels profiled")
        return
    head, units = rows[0], rows[1]
    ki, ti = head.index("Kernel Name"), head.index("gpu__time_duration.sum")
    units_us = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}
    scale = units_us[units[ti]]
    total, count = defaultdict(float), defaultdict(int)
    for r in rows[2:]:
        k = short(r[ki])
        total[k] += float(r[ti].replace(",", "")) * scale
        count[k] += 1
    all_us = sum(total.values())
    print(f"{path}: {sum(count.values())} kernels, {all_us / 1e3:.3f} ms of kernel time")
    print(f"{'kernel':92s} {'calls':>6s} {'total us':>10s} {'share':>6s}")
    for k in sorted(total, key=total.get, reverse=True)[:30]:
        print(f"{k:92s} {count[k]:6d} {total[k]:10.1f} {100 * total[k] / all_us:5.1f}%")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "build":
        build(sys.argv[2])
    elif cmd == "run":
        run(*sys.argv[2:5])
    elif cmd == "summary":
        for p in sys.argv[2:]:
            summary(p)
    else:
        sys.exit(__doc__)

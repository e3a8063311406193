"""Time loading an SD 1.5-shaped single-file checkpoint beside the safetensors package.

    python bench/load_checkpoint.py [--path FILE] [--repeat N] [--delete]

Writes a float32 checkpoint with the CompVis names and the shapes of the SD 1.5 UNet,
VAE and CLIP text encoder (about 4.3 GB of random values; shapes from the diffusers and
transformers model classes built on the meta device) unless FILE already exists, reads
it once so it sits in the page cache, then in a fresh process for each loader:

- sdcore.load_model(path): best of N; RSS growth after the load (the model kept alive)
  as a fraction of the weights' size, and again after every tensor has been read once;
- safetensors.safe_open(path) listing every tensor (reads the header, as sdcore does);
- safetensors.numpy.load_file(path) (reads every tensor into memory).

and prints the times, their ratios to sdcore's, and the RSS growth. Targets: load under
2 s, RSS growth under 1.2x the weights. With --delete the file is removed afterwards.
"""

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

# the checkout's sdcore (an in-place build) before any installed one
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shape_table():
    """{CompVis name: shape} of SD 1.5, from the model classes on the meta device."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdcore import checkpoint

    family = checkpoint.FAMILIES["sd1"]
    with torch.device("meta"):
        models = {
            "unet": UNet2DConditionModel(**family.unet),
            "vae": AutoencoderKL(**family.vae),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**family.text_encoder)),
        }
    table = {}
    for component, model in models.items():
        sd = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if component == "text_encoder":
            sd = {k if k.startswith("text_model.") else "text_model." + k: s for k, s in sd.items()}
        names = checkpoint.ldm_names(component, family_config(family, component))
        assert set(names) == set(sd), component
        for name, (ldm, ldm_shape) in names.items():
            assert int(np.prod(ldm_shape)) == int(np.prod(sd[name])), name
            table[ldm] = ldm_shape
    return table


def family_config(family, component):
    return {"unet": family.unet, "vae": family.vae, "text_encoder": family.text_encoder}[component]


def write_checkpoint(path, seed=0):
    """Stream the file tensor by tensor: never more than one tensor in memory."""
    table = shape_table()
    header, offset = {}, 0
    for name, shape in table.items():
        n = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    # real SD 1.x files also hold the text encoder's int64 position ids
    ids = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    header[ids] = {"dtype": "I64", "shape": [1, 77], "data_offsets": [offset, offset + 77 * 8]}
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    rng = np.random.default_rng(seed)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for shape in table.values():
            a = rng.standard_normal(int(np.prod(shape)), dtype=np.float32)
            a *= 0.02
            f.write(a.tobytes())
        f.write(np.arange(77, dtype=np.int64).tobytes())
    os.replace(tmp, path)
    return offset


def warm_page_cache(path):
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(64 << 20)
        while f.readinto(buf):
            pass


def status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def child(loader, path, repeat):
    """One loader in this (fresh) process: best time, RSS growth of the first load."""
    if loader == "sdcore":
        import sdcore

        def load():
            return sdcore.load_model(path)
    elif loader == "safe_open":
        from safetensors import safe_open

        def load():
            with safe_open(path, "np") as f:
                return list(f.keys())
    else:
        from safetensors.numpy import load_file

        def load():
            return load_file(path)

    rss0, anon0 = status_kb("VmRSS"), status_kb("RssAnon")
    times = []
    t0 = time.perf_counter()
    kept = load()
    times.append(time.perf_counter() - t0)
    rss1, anon1 = status_kb("VmRSS"), status_kb("RssAnon")
    result = {"rss_kb": rss1 - rss0, "anon_kb": anon1 - anon0}
    if loader == "sdcore":
        # what a generation costs on top: every tensor read once through the mapping
        # (array() makes a short-lived float32 copy of one tensor at a time)
        for part in (kept.text_encoder, kept.unet, kept.vae):
            for name in part.weights.names():
                part.weights.array(name)
        result["touched_rss_kb"] = status_kb("VmRSS") - rss0
        result["touched_anon_kb"] = status_kb("RssAnon") - anon0
    del kept
    for _ in range(repeat - 1):
        t0 = time.perf_counter()
        kept = load()
        times.append(time.perf_counter() - t0)
        del kept
    print(json.dumps({"best": min(times), **result}))


def run_child(loader, path, repeat):
    out = subprocess.run(
        [sys.executable, __file__, "--child", loader, "--path", path, "--repeat", str(repeat)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = os.path.join(tempfile.gettempdir(), "sdcore-bench", "sd15-f32.safetensors")
    parser.add_argument("--path", default=default)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--delete", action="store_true", help="remove the file afterwards")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.path, args.repeat)
        return

    import sdcore

    print(f"sdcore from {os.path.dirname(sdcore.__file__)}")
    if not os.path.exists(args.path):
        os.makedirs(os.path.dirname(args.path), exist_ok=True)
        t0 = time.perf_counter()
        write_checkpoint(args.path)
        print(f"wrote {args.path} in {time.perf_counter() - t0:.1f} s")
    size = os.path.getsize(args.path)
    try:
        t0 = time.perf_counter()
        warm_page_cache(args.path)
        print(f"page cache warmed: {size / 1e9:.2f} GB read in {time.perf_counter() - t0:.2f} s")
        results = {name: run_child(name, args.path, args.repeat) for name in
                   ("sdcore", "safe_open", "load_file")}  # fmt: skip
    finally:
        if args.delete:
            os.remove(args.path)
            print(f"deleted {args.path}")

    ours = results["sdcore"]["best"]
    print(f"\n{'loader':<40} {'best s':>9} {'x sdcore':>9} {'RSS growth':>11} {'(anon)':>8}")
    labels = {
        "sdcore": "sdcore.load_model",
        "safe_open": "safetensors.safe_open + keys()",
        "load_file": "safetensors.numpy.load_file",
    }
    for name, r in results.items():
        print(
            f"{labels[name]:<40} {r['best']:>9.4f} {r['best'] / ours:>9.1f} "
            f"{r['rss_kb'] * 1024 / size:>10.3f}x {r['anon_kb'] * 1024 / size:>7.3f}x"
        )
    r = results["sdcore"]
    ok_time, ok_rss = r["best"] < 2.0, r["rss_kb"] * 1024 / size < 1.2
    print(
        f"\nsdcore: {r['best']:.4f} s (target < 2 s: {'met' if ok_time else 'NOT met'}), "
        f"RSS growth {r['rss_kb'] / 1024:.1f} MiB = {r['rss_kb'] * 1024 / size:.4f}x of "
        f"{size / 1e9:.2f} GB (target < 1.2x: {'met' if ok_rss else 'NOT met'})"
    )
    print(
        f"after reading every tensor once: RSS growth {r['touched_rss_kb'] * 1024 / size:.3f}x "
        f"(private {r['touched_anon_kb'] * 1024 / size:.3f}x): the weights are shared, "
        "file-backed pages of the mapping, never a private copy"
    )


if __name__ == "__main__":
    main()

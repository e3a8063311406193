#!/usr/bin/env python3
"""Train the default model shipped with sdcore: a small Stable Diffusion 1.x model of shapes.

The model has the SD 1.x architecture at a small size: a CLIP text encoder (``CLIPTextModel``,
the full 49408-token CLIP BPE vocabulary so the standard tokenizer works), a
``UNet2DConditionModel`` with cross-attention, and an ``AutoencoderKL`` with a downsampling factor
of 8 and 4 latent channels. It learns from ``tools/make_shapes_dataset.py``: 128x128 images of
coloured shapes with captions; the held-out (colour, shape, background) triples never occur.

Stages:

1. data: images and token ids are drawn by a pool of worker processes while training runs;
2. the autoencoder: L1 reconstruction (pixels of objects weighted ``--vae-fg-weight`` times
   more than the background) + an L1 term on image gradients (keeps edges sharp) + a small KL
   term; then ``scaling_factor`` = 1 / std of the latents of a data sample, and the scores of its
   reconstructions of the held-out scenes (``vae_ceiling`` in the log: what the whole model can
   score at best);
3. the text encoder and the UNet, trained together on the frozen autoencoder's latents:
   epsilon prediction, the DDPM schedule of SD 1.x (scaled_linear 0.00085..0.012, 1000 steps),
   10% of captions replaced by the empty prompt (for classifier-free guidance), min-SNR loss
   weighting, a little offset noise (so flat backgrounds of any brightness are reachable), AdamW,
   bf16 autocast on a GPU and an exponential moving average of the weights, which is what is
   saved;
4. output: a diffusers folder (``unet/``, ``vae/``, ``text_encoder/`` in float16 safetensors,
   ``tokenizer/``, ``scheduler/``, ``model_index.json``), ``training_log.json``, sample images
   drawn with diffusers' ``StableDiffusionPipeline`` loaded back from the folder, and the scores
   of ``tools/eval_default_model.py`` on held-out prompts.

Each stage stops at its step count or at its share of ``--time-budget-min``, whichever comes
first; the learning rate decays with whichever of the two is further along, so a stage cut short
by time still ends at a low learning rate.

``--init-from DIR`` resumes from the output folder of an earlier run (same configuration: both
``--smoke`` or neither): the autoencoder, text encoder and UNet are loaded from it (float32), the
autoencoder stage is skipped (its weights and ``scaling_factor`` are kept), and the whole budget
less the reserve goes to the text encoder + UNet stage, which starts as soon as the first few
thousand images are drawn (the rest are encoded between steps). The peak learning rate is then
half the default, with a shorter warm-up; the EMA starts from the loaded weights.

``--init-vae-from DIR`` takes only the autoencoder of an earlier run (a folder with ``vae/``) and
trains the text encoder and UNet from scratch with the whole budget (full learning rate).

Usage::

    python tools/train_default_model.py --out /tmp/model                 # GPU, about 8.5 min
    python tools/train_default_model.py --init-from /tmp/model --out /tmp/model2 --seed 1
    python tools/train_default_model.py --smoke --device cpu --out /tmp/smoke_model

The shipped model came from two runs on one H100 (``MODEL_CARD.md``)::

    python tools/train_default_model.py --time-budget-min 9.25 --seed 3 --out /tmp/run1
    python tools/train_default_model.py --time-budget-min 9.5 --reserve-s 30 --images 300000 \
        --seed 4 --init-vae-from /tmp/run1 --out /tmp/model
"""

from __future__ import annotations

import argparse
import copy
import gzip
import importlib.util
import json
import math
import mmap
import multiprocessing as mp
import os
import shutil
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import make_shapes_dataset as ds  # noqa: E402


def _load_sdcore_module(name):
    """sdcore/<name>.py by path: it needs only the standard library, not the extension."""
    spec = importlib.util.spec_from_file_location(
        f"sdcore_{name}", os.path.join(ROOT, "sdcore", f"{name}.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tk = _load_sdcore_module("tokenizer")
configs = _load_sdcore_module("configs")  # SD 1.5's configs

MAX_TOKENS = 77
VOCAB_SIZE = 49408
IMAGE_SIZE = 128

# ---- configurations ----

# Sizes in float16: text encoder 13.9 MB (of which 12.6 MB is the token embedding), UNet 17.5 MB,
# autoencoder 6.8 MB: 38.2 MB of weights, 39.7 MB with the tokenizer files, under the 40 MB that
# the package allows for the model.
GPU_CONFIG = {
    "images": 200_000,
    "vae_blocks": (32, 64, 96, 128),
    "vae_groups": 32,
    "text_hidden": 128,
    "text_layers": 3,
    "text_heads": 2,
    "unet_blocks": (64, 128, 128),
    "unet_layers": 2,
    "unet_heads": 4,
    "unet_groups": 32,
    "vae_batch": 64,
    "vae_steps": 50_000,
    "vae_lr": 1e-3,
    # The UNet step is bound by the host issuing ~7000 small kernels, not by the GPU: on an H100
    # batch 256 runs at 8.2 steps/s and batch 1024 at 7.4, so 1024 sees 3.6x the samples a second.
    "unet_batch": 1024,
    "unet_steps": 50_000,
    "unet_lr": 6e-4,
    # The autoencoder bounds what the UNet can draw: after 2000 steps its reconstructions of the
    # held-out scenes scored 72% colour and 61% shape, as the whole model did, so it gets over
    # half of the budget of a run from scratch.
    "vae_time_share": 0.55,  # of the time budget
    "reserve_s": 45.0,  # kept at the end for saving, samples and the held-out evaluation
    "sample_steps": 20,
    "eval_prompts": 100,
    "log_every": 50,
}

SMOKE_CONFIG = {
    **GPU_CONFIG,
    "images": 256,
    "vae_blocks": (8, 8, 16, 16),
    "vae_groups": 4,
    "text_hidden": 32,
    "text_layers": 1,
    "text_heads": 1,
    "unet_blocks": (16, 16, 32),
    "unet_layers": 1,
    "unet_heads": 2,
    "unet_groups": 8,
    "vae_batch": 4,
    "vae_steps": 6,
    "unet_batch": 8,
    "unet_steps": 6,
    "reserve_s": 0.0,
    "sample_steps": 3,
    "eval_prompts": 4,
    "log_every": 2,
}

# Prompts drawn into samples/ after training: the vocabulary of the data, and two held-out
# triples (never seen in training) at the end.
SAMPLE_PROMPTS = [
    "a red circle",
    "a blue square on a yellow background",
    "a green triangle on a white background",
    "a purple star",
    "a yellow heart on a black background",
    "an orange ring in the top left corner",
    "a small cyan cross on the right",
    "a large pink diamond, gray background",
    "a brown hexagon at the bottom",
    "a red circle and a blue square",
]

# ---- data ----

_worker_tok = None
# The arrays that the workers fill: anonymous shared memory mapped before the pool forks, so the
# images never go through a pipe (200k images are about 10 GB).
_shared: dict = {}


def _worker_tokenizer():
    global _worker_tok
    if _worker_tok is None:
        _worker_tok = tk.default_tokenizer()
    return _worker_tok


def _draw_chunk(task):
    seed, start, stop, size = task
    tok = _worker_tokenizer()
    images, ids = _shared["images"], _shared["ids"]
    for i in range(start, stop):
        image, caption, _ = ds.sample(seed, i, size)
        images[i] = image
        ids[i] = tok(caption)
    return start, stop


def _shared_array(shape, dtype):
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, max(1, n)), dtype=dtype, count=int(np.prod(shape))).reshape(
        shape
    )


class ShapesData:
    """Images ``(N, H, W, 3) uint8`` and token ids ``(N, 77) int32``, filled in index order by a
    process pool in the background; ``ready`` samples at the front are complete."""

    def __init__(self, count: int, seed: int, size: int, workers: int, chunk: int = 512):
        self.count = count
        self.ready = 0
        self.error: BaseException | None = None
        self.t0 = time.perf_counter()
        self.seconds = None
        tasks = [(seed, s, min(count, s + chunk), size) for s in range(0, count, chunk)]
        if "fork" in mp.get_all_start_methods() and workers > 0:
            self.images = _shared_array((count, size, size, 3), np.uint8)
            self.ids = _shared_array((count, MAX_TOKENS), np.int32)
            _shared.update(images=self.images, ids=self.ids)
            # fork before any CUDA or torch thread exists in this process
            self._pool = mp.get_context("fork").Pool(workers)
            results = self._pool.imap(_draw_chunk, tasks)
        else:  # no fork: draw in a thread of this process
            self.images = np.empty((count, size, size, 3), np.uint8)
            self.ids = np.empty((count, MAX_TOKENS), np.int32)
            _shared.update(images=self.images, ids=self.ids)
            self._pool = None
            results = map(_draw_chunk, tasks)
        self._thread = threading.Thread(target=self._fill, args=(results,), daemon=True)
        self._thread.start()

    def _fill(self, results):
        try:
            for _start, stop in results:  # in index order
                self.ready = stop
            self.seconds = time.perf_counter() - self.t0
        except BaseException as e:  # shown to the training thread by wait()
            self.error = e
        finally:
            if self._pool is not None:
                self._pool.close()

    def wait(self, n: int) -> None:
        """Block until at least ``n`` samples are ready."""
        n = min(n, self.count)
        while self.ready < n:
            if self.error is not None:
                raise RuntimeError(f"drawing the data failed: {self.error!r}") from self.error
            if not self._thread.is_alive() and self.ready < n:
                raise RuntimeError("the data workers stopped early")
            time.sleep(0.05)

    def close(self):
        self.wait(self.count)
        self._thread.join()
        if self._pool is not None:
            self._pool.join()


# ---- models ----


def make_models(cfg):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(cfg["vae_blocks"]),
        up_block_types=("UpDecoderBlock2D",) * len(cfg["vae_blocks"]),
        block_out_channels=tuple(cfg["vae_blocks"]),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=cfg["vae_groups"],
        sample_size=IMAGE_SIZE,
    )
    h = cfg["text_hidden"]
    # special-token ids as in the SD 1.x text encoder config (eos 2: pooled output at the
    # highest id, which is CLIP's <|endoftext|>)
    text_config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=h,
        intermediate_size=4 * h,
        projection_dim=h,
        num_hidden_layers=cfg["text_layers"],
        num_attention_heads=cfg["text_heads"],
        max_position_embeddings=MAX_TOKENS,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
    )
    text_encoder = CLIPTextModel(text_config)
    factor = 2 ** (len(cfg["vae_blocks"]) - 1)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // factor,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(cfg["unet_blocks"]),
        layers_per_block=cfg["unet_layers"],
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=h,
        attention_head_dim=cfg["unet_heads"],  # SD 1.x meaning: the number of heads
        norm_num_groups=cfg["unet_groups"],
    )
    return vae, text_encoder, unet


def load_models(folder: str, cfg):
    """The three parts of an earlier output folder, in float32; they must have the sizes of
    ``cfg`` (a smoke folder cannot seed a full run and the other way round)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    for name in ("vae", "text_encoder", "unet"):
        if not os.path.isfile(os.path.join(folder, name, "config.json")):
            raise SystemExit(f"--init-from {folder}: no {name}/config.json there")
    vae = AutoencoderKL.from_pretrained(os.path.join(folder, "vae")).to(torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder"))
    text_encoder = text_encoder.to(torch.float32)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet")).to(torch.float32)
    parts = {
        "vae_blocks": tuple(vae.config.block_out_channels),
        "text_hidden": text_encoder.config.hidden_size,
        "text_layers": text_encoder.config.num_hidden_layers,
        "unet_blocks": tuple(unet.config.block_out_channels),
        "unet_layers": unet.config.layers_per_block,
    }
    wrong = {k: (v, tuple(cfg[k]) if isinstance(v, tuple) else cfg[k]) for k, v in parts.items()}
    wrong = {k: v for k, v in wrong.items() if v[0] != v[1]}
    if wrong:
        raise SystemExit(
            f"--init-from {folder}: the model there does not match this configuration "
            f"(found, expected): {wrong}; use --smoke for both runs or for neither"
        )
    if vae.config.scaling_factor in (None, 0):
        raise SystemExit(f"--init-from {folder}: vae/config.json has no scaling_factor")
    return vae, text_encoder, unet


def load_vae(folder: str, cfg):
    """The autoencoder alone of an earlier output folder (or of a folder holding only ``vae/``),
    in float32, with its ``scaling_factor``."""
    import torch
    from diffusers import AutoencoderKL

    path = os.path.join(folder, "vae")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise SystemExit(f"--init-vae-from {folder}: no vae/config.json there")
    vae = AutoencoderKL.from_pretrained(path).to(torch.float32)
    if tuple(vae.config.block_out_channels) != tuple(cfg["vae_blocks"]):
        raise SystemExit(
            f"--init-vae-from {folder}: channels {tuple(vae.config.block_out_channels)}, "
            f"expected {tuple(cfg['vae_blocks'])}"
        )
    if vae.config.scaling_factor in (None, 0):
        raise SystemExit(f"--init-vae-from {folder}: vae/config.json has no scaling_factor")
    return vae


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def lr_factor(progress: float, step: int, warmup: int) -> float:
    """Linear warm-up, then a cosine decay to 10% at ``progress`` 1."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    p = min(1.0, max(0.0, progress))
    return warm * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * p)))


class Stage:
    """Steps and time of one training stage; ``progress`` is the further along of the two."""

    def __init__(self, name: str, steps: int, seconds: float, log_every: int):
        self.name, self.steps, self.seconds, self.log_every = name, steps, seconds, log_every
        self.t0 = time.perf_counter()
        self.step = 0
        self.history: list[dict] = []
        self._acc, self._n = 0.0, 0
        self.stopped_by = "steps"

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def progress(self) -> float:
        return max(self.step / max(1, self.steps), self.elapsed() / max(1e-9, self.seconds))

    def running(self) -> bool:
        if self.step >= self.steps:
            self.stopped_by = "steps"
            return False
        if self.step > 0 and self.elapsed() >= self.seconds:
            self.stopped_by = "time"
            return False
        return True

    def record(self, loss, lr: float, t_run: float, **extra) -> None:
        """Count a step; ``loss`` may be a device tensor, read only when a line is logged (so
        the GPU is not waited for at every step)."""
        self._acc = self._acc + loss
        self._n += 1
        self.step += 1
        if self.step % self.log_every == 0 or self.step == self.steps:
            mean = float(self._acc) / self._n
            el = self.elapsed()
            row = {"step": self.step, "loss": round(mean, 6), "lr": lr, "elapsed_s": round(el, 1)}
            row.update({k: round(v, 6) for k, v in extra.items()})
            self.history.append(row)
            extras = "".join(f" {k} {v:.4f}" for k, v in extra.items())
            print(
                f"[{self.name}] step {self.step} loss {mean:.5f}{extras} lr {lr:.2e} "
                f"{self.step / max(el, 1e-9):.1f} it/s elapsed {el:.0f}s total {t_run:.0f}s",
                flush=True,
            )
            self._acc, self._n = 0.0, 0

    def summary(self) -> dict:
        return {
            "steps": self.step,
            "seconds": round(self.elapsed(), 1),
            "stopped_by": self.stopped_by,
            "history": self.history,
        }


class DeviceImages:
    """The images on the training device, uploaded in pieces as the workers finish them, so that
    a training step never copies from host memory (a copy from pageable memory would make the
    host wait for the GPU at every step). On the CPU it is the host array itself."""

    def __init__(self, data: ShapesData, device):
        import torch

        self.data, self.device, self.n = data, device, 0
        if str(device).startswith("cuda"):
            self.tensor = torch.empty(data.images.shape, dtype=torch.uint8, device=device)
        else:
            self.tensor = torch.from_numpy(data.images)

    def sync(self, most: int = 16384) -> int:
        """Upload up to ``most`` newly drawn images; returns how many are on the device."""
        import torch

        ready = self.data.ready
        if self.tensor.device.type == "cpu":
            self.n = ready
        elif ready > self.n:
            stop = min(ready, self.n + most)
            self.tensor[self.n : stop].copy_(torch.from_numpy(self.data.images[self.n : stop]))
            self.n = stop
        return self.n

    def pixels(self, index):
        """Images ``index`` (a tensor of indices or a slice) as ``(B, 3, H, W)`` in [-1, 1]."""
        x = self.tensor[index]
        return x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def train_vae(vae, images: DeviceImages, cfg, args, device, autocast, t_start):
    import torch

    gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    cuda = str(device).startswith("cuda")
    fmt = torch.channels_last if cuda and args.channels_last else torch.contiguous_format
    vae.to(device).train()
    vae.to(memory_format=fmt)
    fused = {"fused": True} if str(device).startswith("cuda") else {}
    opt = torch.optim.AdamW(
        vae.parameters(), lr=cfg["vae_lr"], betas=(0.9, 0.99), weight_decay=0, **fused
    )
    seconds = cfg["vae_time_share"] * args.time_budget_min * 60.0
    stage = Stage("vae", cfg["vae_steps"], seconds, cfg["log_every"])
    batch = cfg["vae_batch"]
    images.data.wait(min(images.data.count, 8 * batch))
    latent_elems = None
    while stage.running():
        n = images.sync()
        idx = torch.randint(0, n, (batch,), device=device, generator=gen)
        x = images.pixels(idx).contiguous(memory_format=fmt)  # (B, 3, H, W)
        with autocast():
            post = vae.encode(x).latent_dist
        mean, logvar = post.mean.float(), post.logvar.float()  # (B, 4, h, w)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, device=device, generator=gen)
        with autocast():
            rec = vae.decode(z).sample
        rec = rec.float()
        # The objects cover a few percent of the pixels: weigh every pixel that differs from the
        # background (the corner pixel: objects never touch the border) ``vae_fg_weight`` times
        # more, so that the mean is not ruled by the flat background.
        fg = ((x - x[..., :1, :1]).abs().amax(dim=1, keepdim=True) > 0.02).float()
        w = 1.0 + args.vae_fg_weight * fg  # (B, 1, H, W)
        l1 = ((rec - x).abs() * w).mean() / w.mean()
        # edges: differences of neighbouring pixels must match too
        gx = ((rec[..., 1:] - rec[..., :-1]) - (x[..., 1:] - x[..., :-1])).abs().mean()
        gy = ((rec[..., 1:, :] - rec[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])).abs().mean()
        latent_elems = mean[0].numel()
        kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()
        loss = l1 + 0.5 * (gx + gy) + args.kl_weight * kl
        lr = cfg["vae_lr"] * lr_factor(stage.progress(), stage.step, 100)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        log_now = (stage.step + 1) % stage.log_every == 0
        stage.record(
            loss.detach(),
            lr,
            time.perf_counter() - t_start,
            **({"l1": l1.item(), "kl": kl.item()} if log_now else {}),
        )
    vae.eval()
    vae.to(memory_format=torch.contiguous_format)
    out = stage.summary()
    out["latent_elements"] = latent_elems
    out["fg_weight"] = args.vae_fg_weight
    return out


def vae_ceiling(vae, device, autocast, n: int) -> dict:
    """Scores of the autoencoder's reconstructions of the ``n`` held-out reference scenes: what the
    whole model could score at best if the UNet drew perfect latents."""
    import eval_default_model as ev
    import torch

    items = ev.held_out_items(n, seed=0)
    ref = np.stack([ds.render(item["meta"], IMAGE_SIZE) for item in items])
    x = torch.from_numpy(ref).to(device).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    with torch.no_grad(), autocast():
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample
    rec = ((rec.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    rec = rec.permute(0, 2, 3, 1).cpu().numpy()
    pairs = enumerate(zip(items, rec, strict=True))
    rows = [ev._judge(item, image, i) for i, (item, image) in pairs]
    s = ev.summary(rows)
    s.pop("rows")
    s["mean_abs_error"] = round(float(np.abs(rec.astype(np.int16) - ref).mean()), 3)
    return s


def encode_latents(vae, images: DeviceImages, autocast, batch=512):
    """Posterior mean and std of every image, (N, 4, h, w) float32 on the images' device."""
    import torch

    images.data.close()
    while images.sync() < images.data.count:
        pass
    means, stds = [], []
    with torch.no_grad():
        for s in range(0, images.data.count, batch):
            x = images.pixels(slice(s, s + batch))
            with autocast():
                post = vae.encode(x).latent_dist
            means.append(post.mean.float())
            stds.append(post.std.float())
    return torch.cat(means), torch.cat(stds)


class LatentBank:
    """Posterior means and stds of the images, ``(N, 4, h, w)`` float32, and their token ids
    ``(N, 77)`` on the training device, of which the first ``n`` are filled. After the autoencoder
    stage all are encoded at once (``encode_latents``); when resuming, ``update`` encodes the
    images drawn since the last call (a chunk at a time, between UNet steps), so that the UNet
    stage starts at once and never waits for the data."""

    def __init__(self, mean, std, ids, n: int, data=None, vae=None, autocast=None):
        self.mean, self.std, self.ids, self.n = mean, std, ids, n
        self.data, self.vae, self.autocast = data, vae, autocast

    @classmethod
    def complete(cls, mean, std, data: ShapesData):
        import torch

        ids = torch.from_numpy(data.ids).to(mean.device)
        return cls(mean, std, ids, mean.shape[0])

    @classmethod
    def incremental(cls, vae, data: ShapesData, device, autocast):
        import torch

        hw = IMAGE_SIZE // 2 ** (len(vae.config.block_out_channels) - 1)
        shape = (data.count, vae.config.latent_channels, hw, hw)
        mean = torch.empty(shape, dtype=torch.float32, device=device)
        std = torch.empty(shape, dtype=torch.float32, device=device)
        ids = torch.empty((data.count, MAX_TOKENS), dtype=torch.int32, device=device)
        return cls(mean, std, ids, 0, data, vae.to(device).eval(), autocast)

    def update(self, most: int = 1024) -> int:
        """Encode up to ``most`` newly drawn images; returns how many are encoded."""
        import torch

        if self.data is None or self.n >= self.data.count:
            return self.n
        if self.data.error is not None:
            self.data.wait(self.data.count)  # raises
        ready = self.data.ready
        if ready > self.n:
            stop = min(ready, self.n + most)
            x = torch.from_numpy(self.data.images[self.n : stop]).to(self.mean.device)
            x = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
            with torch.no_grad(), self.autocast():
                post = self.vae.encode(x).latent_dist
            self.mean[self.n : stop] = post.mean.float()
            self.std[self.n : stop] = post.std.float()
            self.ids[self.n : stop] = torch.from_numpy(self.data.ids[self.n : stop]).to(
                self.ids.device
            )
            self.n = stop
        return self.n


def train_unet(
    text_encoder, unet, bank: LatentBank, cfg, args, device, autocast, t_start, deadline, resumed
):
    import torch

    mean, std, ids = bank.mean, bank.std, bank.ids
    empty = torch.tensor(tk.default_tokenizer()(""), dtype=torch.int32, device=device)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, 0).to(device)
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    loss_weight = (torch.clamp(snr, max=args.snr_gamma) / snr).float()
    sqrt_ac = alphas_cumprod.sqrt().float()
    sqrt_1mac = (1.0 - alphas_cumprod).sqrt().float()
    sf = args.scaling_factor

    cuda = str(device).startswith("cuda")
    text_encoder.to(device).train()
    unet.to(device).train()
    # channels_last: cuDNN's bf16 convolutions run NHWC natively; in NCHW each one is wrapped in
    # layout transposes. Only the memory layout changes, not the weights that are saved.
    fmt = torch.channels_last if cuda and args.channels_last else torch.contiguous_format
    unet.to(memory_format=fmt)
    unet_fwd = unet
    if cuda and args.compile:
        unet_fwd = torch.compile(unet)  # shares the parameters; the first steps compile
    models = [text_encoder, unet]
    params = [p for m in models for p in m.parameters()]
    decay = [p for p in params if p.ndim >= 2 and p.shape[0] != VOCAB_SIZE]
    no_decay = [p for p in params if not (p.ndim >= 2 and p.shape[0] != VOCAB_SIZE)]
    fused = {"fused": True} if cuda else {}
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg["unet_lr"],
        betas=(0.9, 0.99),
        **fused,
    )
    live = [p.detach() for p in params]  # float32 views of the weights, for the EMA
    # The EMA starts at the initial weights: from scratch its decay ramps up from 0.1 so the random
    # start is forgotten at once; when resuming the start is the earlier run's EMA, worth keeping,
    # so the full decay applies from the first step.
    ema = [p.clone() for p in live]
    # a resumed run restarts from good weights: a short warm-up is enough
    warmup = 100 if resumed else 250
    seconds = max(1.0, deadline - time.perf_counter())
    stage = Stage("unet", cfg["unet_steps"], seconds, cfg["log_every"])
    batch = cfg["unet_batch"]
    gen = torch.Generator(device=device).manual_seed(args.seed + 2)
    while stage.running():
        n = bank.update()  # a no-op once all latents are encoded
        idx = torch.randint(0, n, (batch,), device=device, generator=gen)
        mu = mean[idx]
        x0 = (mu + std[idx] * torch.randn(mu.shape, device=device, generator=gen)) * sf
        tok = ids[idx]
        drop = torch.rand(batch, device=device, generator=gen) < args.caption_dropout
        tok = torch.where(drop[:, None], empty[None], tok).long()  # (B, 77)
        noise = torch.randn(x0.shape, device=device, generator=gen)
        if args.noise_offset > 0:
            offset = torch.randn(batch, x0.shape[1], 1, 1, device=device, generator=gen)
            noise = noise + args.noise_offset * offset
        t = torch.randint(0, 1000, (batch,), device=device, generator=gen)
        xt = sqrt_ac[t].view(-1, 1, 1, 1) * x0 + sqrt_1mac[t].view(-1, 1, 1, 1) * noise
        xt = xt.contiguous(memory_format=fmt)
        with autocast():
            context = text_encoder(tok).last_hidden_state  # (B, 77, hidden)
            pred = unet_fwd(xt, t, encoder_hidden_states=context).sample  # (B, 4, h, w)
        per_sample = (pred.float() - noise).square().mean(dim=(1, 2, 3))
        loss = (per_sample * loss_weight[t]).mean()
        lr = cfg["unet_lr"] * lr_factor(stage.progress(), stage.step, warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        d = args.ema_decay
        if not resumed:
            d = min(d, (1.0 + stage.step) / (10.0 + stage.step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, live, 1.0 - d)
        log_now = (stage.step + 1) % stage.log_every == 0
        stage.record(
            loss.detach(),
            lr,
            time.perf_counter() - t_start,
            **({"mse": per_sample.mean().item()} if log_now else {}),
        )
    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e.to(p.dtype))
    unet.to(memory_format=torch.contiguous_format)
    text_encoder.eval()
    unet.eval()
    out = stage.summary()
    out.update(lr=cfg["unet_lr"], warmup=warmup, resumed=resumed, latents_encoded=bank.n)
    return out


# ---- output ----


def write_tokenizer(folder: str) -> None:
    """vocab.json and merges.txt of the CLIP vocabulary, from the BPE file shipped in sdcore."""
    os.makedirs(folder, exist_ok=True)
    tok = tk.default_tokenizer()
    if len(tok.vocab) != VOCAB_SIZE:
        raise RuntimeError(f"the CLIP vocabulary has {len(tok.vocab)} tokens, not {VOCAB_SIZE}")
    with gzip.open(tk.DEFAULT_BPE_FILE, "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : tk.CLIP_NUM_MERGES + 1]
    vocab = dict(sorted(tok.vocab.items(), key=lambda kv: kv[1]))
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(configs.SD15_TOKENIZER_CONFIG, f, indent=2)
    with open(os.path.join(folder, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(configs.SD15_SPECIAL_TOKENS_MAP, f, indent=2)


def save_model(out: str, vae, text_encoder, unet) -> dict:
    """The diffusers folder, float16 safetensors; returns the bytes of each part."""
    import diffusers
    import torch
    from diffusers import EulerAncestralDiscreteScheduler

    os.makedirs(out, exist_ok=True)
    for name, model in (("vae", vae), ("text_encoder", text_encoder), ("unet", unet)):
        folder = os.path.join(out, name)
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        half = copy.deepcopy(model).to("cpu", torch.float16)
        half.save_pretrained(folder, safe_serialization=True)
    write_tokenizer(os.path.join(out, "tokenizer"))
    sd15 = configs.SD15_SCHEDULER  # SD 1.x's training schedule, with Euler ancestral steps
    scheduler = EulerAncestralDiscreteScheduler(
        num_train_timesteps=sd15["num_train_timesteps"],
        beta_start=sd15["beta_start"],
        beta_end=sd15["beta_end"],
        beta_schedule=sd15["beta_schedule"],
        prediction_type=sd15["prediction_type"],
        timestep_spacing="leading",
        steps_offset=sd15["steps_offset"],
    )
    scheduler.save_pretrained(os.path.join(out, "scheduler"))
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
    sizes = {}
    for name in ("vae", "text_encoder", "unet", "tokenizer", "scheduler"):
        folder = os.path.join(out, name)
        sizes[name] = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    sizes["total"] = sum(sizes.values()) + os.path.getsize(os.path.join(out, "model_index.json"))
    return sizes


def load_pipeline(out: str, device: str):
    """diffusers' StableDiffusionPipeline read back from the folder (float32: the parts are
    small, and this checks the saved files rather than the objects in memory)."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        out, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")[:60]


def write_samples(pipe, out: str, prompts: list[str], steps: int, guidance: float) -> list[dict]:
    import torch

    folder = os.path.join(out, "samples")
    os.makedirs(folder, exist_ok=True)
    generators = [torch.Generator("cpu").manual_seed(i) for i in range(len(prompts))]
    images = pipe(
        prompts,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        generator=generators,
        output_type="np",
    ).images
    images = np.clip(np.rint(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)
    rows = []
    for i, (prompt, image) in enumerate(zip(prompts, images, strict=True)):
        name = f"{i:02d}_{_slug(prompt)}.png"
        ds.write_png(os.path.join(folder, name), image)
        rows.append({"file": name, "prompt": prompt, "seed": i})
    # one picture of all samples, 5 to a row
    cols, gap, s = 5, 4, IMAGE_SIZE
    nrows = -(-len(images) // cols)
    grid = np.full((nrows * (s + gap) + gap, cols * (s + gap) + gap, 3), 60, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[gap + r * (s + gap) : gap + r * (s + gap) + s, gap + c * (s + gap) :][:, :s] = image
    ds.write_png(os.path.join(folder, "grid.png"), grid)
    meta = {"steps": steps, "guidance_scale": guidance, "size": IMAGE_SIZE, "samples": rows}
    with open(os.path.join(folder, "prompts.json"), "w") as f:
        json.dump(meta, f, indent=2)
    return rows


# ---- main ----


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (diffusers layout)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--smoke", action="store_true", help="tiny models and a few steps (CPU check)")
    p.add_argument(
        "--init-from",
        metavar="DIR",
        help="resume from an earlier output folder: load its vae/, text_encoder/ and unet/, skip "
        "the autoencoder stage and give the whole budget to the text encoder + UNet stage",
    )
    p.add_argument(
        "--init-vae-from",
        metavar="DIR",
        help="take the autoencoder (and its scaling_factor) from an earlier output folder, skip "
        "the autoencoder stage, and train the text encoder and UNet from scratch",
    )
    p.add_argument(
        "--vae-time-share",
        type=float,
        help="share of the time budget for the autoencoder stage (default 0.55)",
    )
    p.add_argument(
        "--reserve-s",
        type=float,
        help="seconds kept at the end for saving, samples and evaluation (default 45)",
    )
    p.add_argument(
        "--vae-fg-weight",
        type=float,
        default=4.0,
        help="extra weight of the pixels of objects in the autoencoder's L1 loss",
    )
    p.add_argument("--images", type=int, help="number of training images")
    p.add_argument("--vae-steps", type=int, help="autoencoder steps (at most)")
    p.add_argument("--unet-steps", type=int, help="text encoder + UNet steps (at most)")
    p.add_argument("--batch", type=int, help="text encoder + UNet batch size")
    p.add_argument("--vae-batch", type=int, help="autoencoder batch size")
    p.add_argument(
        "--lr",
        type=float,
        help="text encoder + UNet peak learning rate (default 5e-4, half that with --init-from)",
    )
    p.add_argument(
        "--time-budget-min",
        type=float,
        default=8.5,
        help="wall-clock minutes for the whole run, data to samples (default 8.5)",
    )
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--seed", type=int, default=0, help="dataset and training seed")
    p.add_argument("--kl-weight", type=float, default=1e-4, help="KL term (per latent element)")
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--noise-offset", type=float, default=0.05)
    p.add_argument("--snr-gamma", type=float, default=5.0, help="min-SNR loss weighting")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--guidance", type=float, default=5.0, help="guidance scale of the samples")
    p.add_argument("--eval-prompts", type=int, help="held-out prompts scored at the end (0: none)")
    p.add_argument("--no-samples", action="store_true", help="skip samples and evaluation")
    p.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="keep the UNet in NCHW layout on the GPU (default: channels_last)",
    )
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the UNet forward (GPU only)"
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    t_start = time.perf_counter()
    args = parse_args(argv)
    cfg = dict(SMOKE_CONFIG if args.smoke else GPU_CONFIG)
    for key, value in (
        ("images", args.images),
        ("vae_steps", args.vae_steps),
        ("unet_steps", args.unet_steps),
        ("unet_batch", args.batch),
        ("vae_batch", args.vae_batch),
        ("unet_lr", args.lr),
        ("eval_prompts", args.eval_prompts),
        ("vae_time_share", args.vae_time_share),
        ("reserve_s", args.reserve_s),
    ):
        if value is not None:
            cfg[key] = value
    if args.init_from and args.lr is None:
        # a warm restart from trained weights: a moderate peak, then the same decay
        cfg["unet_lr"] = cfg["unet_lr"] / 2
    if args.init_from and args.init_vae_from:
        raise SystemExit("--init-from already holds an autoencoder: drop --init-vae-from")
    if cfg["images"] < 1:
        raise SystemExit("--images must be at least 1")
    deadline = t_start + args.time_budget_min * 60.0

    # the workers fork now, before torch starts any thread
    data = ShapesData(cfg["images"], args.seed, IMAGE_SIZE, args.workers)

    import diffusers
    import torch
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to PyTorch")
    torch.manual_seed(args.seed)
    gpu_name = None
    if device.startswith("cuda"):
        # TF32 for what runs in float32 outside autocast (the optimizer's and the loss's matmuls)
        torch.set_float32_matmul_precision("high")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        gpu_name = torch.cuda.get_device_name(device)

        def autocast():
            return torch.autocast("cuda", dtype=torch.bfloat16)
    else:

        def autocast():
            return torch.autocast("cpu", enabled=False)

    if args.init_from:
        vae, text_encoder, unet = load_models(args.init_from, cfg)
    else:
        vae, text_encoder, unet = make_models(cfg)
        if args.init_vae_from:
            vae = load_vae(args.init_vae_from, cfg)
    params = {
        "vae": count_params(vae),
        "text_encoder": count_params(text_encoder),
        "unet": count_params(unet),
    }
    params["total"] = sum(params.values())
    print(
        f"device {device} ({gpu_name or 'cpu'}); parameters: "
        + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in params.items())
        + f" = {2 * params['total'] / 1e6:.1f} MB in float16; {cfg['images']} images",
        flush=True,
    )

    log = {
        "device": device,
        "gpu": gpu_name,
        "torch": torch.__version__,
        "config": cfg,
        "args": vars(args),
        "parameters": params,
    }

    vae_from = args.init_from or args.init_vae_from
    if vae_from:
        # stage 1 skipped: the earlier run's autoencoder and scaling_factor; latents are encoded
        # while the UNet trains, as the workers draw the images
        args.scaling_factor = float(vae.config.scaling_factor)
        log["vae"] = {"steps": 0, "init_from": os.path.abspath(vae_from)}
        bank = LatentBank.incremental(vae, data, device, autocast)
        first = min(data.count, 4 * cfg["unet_batch"])
        data.wait(first)
        while bank.update() < first:
            pass
        print(
            f"autoencoder from {vae_from}: scaling_factor {args.scaling_factor:.4f}, "
            f"peak lr {cfg['unet_lr']:.2e}; UNet stage starts with {bank.n} images encoded",
            flush=True,
        )
    else:
        # stage 1: the autoencoder
        images = DeviceImages(data, device)
        log["vae"] = train_vae(vae, images, cfg, args, device, autocast, t_start)
        if cfg["eval_prompts"] > 0:
            log["vae_ceiling"] = vae_ceiling(vae, device, autocast, cfg["eval_prompts"])
            c = log["vae_ceiling"]
            print(
                f"autoencoder on the held-out scenes: colour {c['color_accuracy']:.0%}, shape "
                f"{c['shape_accuracy']:.0%}, mean abs error {c['mean_abs_error']} / 255; "
                f"shape hits {c['per_shape']}",
                flush=True,
            )
        t = time.perf_counter()
        mean, std = encode_latents(vae, images, autocast)
        del images
        gen = torch.Generator(device=device).manual_seed(args.seed + 3)
        k = min(mean.shape[0], 20_000)
        sample = mean[:k] + std[:k] * torch.randn(mean[:k].shape, device=device, generator=gen)
        args.scaling_factor = float(1.0 / sample.std())
        vae.register_to_config(scaling_factor=args.scaling_factor)
        log["latents"] = {
            "seconds": round(time.perf_counter() - t, 1),
            "scaling_factor": args.scaling_factor,
            "mean": float(sample.mean()),
            "channel_means_scaled": [
                float(v) for v in (sample.mean(dim=(0, 2, 3)) * args.scaling_factor).tolist()
            ],
            "posterior_std_mean": float(std[:k].mean()),
        }
        print(
            f"latents of {mean.shape[0]} images in {log['latents']['seconds']}s: "
            f"scaling_factor {args.scaling_factor:.4f}, "
            f"posterior std {log['latents']['posterior_std_mean']:.4f}",
            flush=True,
        )
        vae.to("cpu")
        bank = LatentBank.complete(mean, std, data)
        del mean, std

    # stage 2: the text encoder and the UNet
    unet_deadline = deadline - cfg["reserve_s"]
    log["unet"] = train_unet(
        text_encoder,
        unet,
        bank,
        cfg,
        args,
        device,
        autocast,
        t_start,
        unet_deadline,
        resumed=bool(args.init_from),
    )
    if vae_from:
        # how well the kept scaling_factor fits this data (the scaled latents' std should be ~1)
        k = min(bank.n, 20_000)
        gen = torch.Generator(device=device).manual_seed(args.seed + 3)
        m, sd = bank.mean[:k], bank.std[:k]
        sample = (m + sd * torch.randn(m.shape, device=device, generator=gen)) * args.scaling_factor
        log["latents"] = {
            "scaling_factor": args.scaling_factor,
            "encoded": bank.n,
            "scaled_std": float(sample.std()),
            "scaled_mean": float(sample.mean()),
        }
        vae.to("cpu")
        data.close()
    log["data"] = {"images": data.count, "seconds": round(data.seconds or 0.0, 1)}
    del bank

    sizes = save_model(args.out, vae, text_encoder, unet)
    log["bytes"] = sizes
    print(
        "saved " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()) + f" to {args.out}",
        flush=True,
    )

    if not args.no_samples:
        t = time.perf_counter()
        pipe = load_pipeline(args.out, device)
        held = [item["prompt"] for item in ds.held_out_prompts(2, seed=args.seed)]
        prompts = SAMPLE_PROMPTS + held
        log["samples"] = write_samples(pipe, args.out, prompts, cfg["sample_steps"], args.guidance)
        print(f"samples: {len(prompts)} images in {args.out}/samples", flush=True)
        if cfg["eval_prompts"] > 0:
            import eval_default_model as ev

            result = ev.evaluate_diffusers(
                pipe,
                ev.held_out_items(cfg["eval_prompts"], seed=0),
                steps=cfg["sample_steps"],
                guidance=args.guidance,
            )
            log["eval"] = ev.summary(result)
            print(ev.format_summary(log["eval"]), flush=True)
        log["samples_seconds"] = round(time.perf_counter() - t, 1)

    log["total_seconds"] = round(time.perf_counter() - t_start, 1)
    with open(os.path.join(args.out, "training_log.json"), "w") as f:
        json.dump(log, f, indent=1)
    print(
        f"done in {log['total_seconds']}s: vae {log['vae']['steps']} steps, "
        f"unet {log['unet']['steps']} steps; model {sizes['total'] / 1e6:.2f} MB",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

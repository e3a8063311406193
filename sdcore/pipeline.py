"""Text to image, shaped like diffusers' StableDiffusionPipeline.

    pipe = Pipeline.from_pretrained("path/to/model")          # a diffusers folder or one file
    images = pipe("a red circle on a blue background", seed=7)
    images[0].save("out.png")                                  # PNG with its parameters

Seeds: image i of a request with seed s uses seed s + i, so each image can be made again
alone from the seed its PNG records. The noise of one image is what
``torch.randn(..., generator=torch.Generator("cpu").manual_seed(seed))`` draws, as
diffusers does on the CPU.
"""

import json
import os
import threading

import numpy as np

from sdcore import _C, __version__
from sdcore import params as P
from sdcore.checkpoint import load_model
from sdcore.devices import compute_dtype, place_weights, require_cuda
from sdcore.prompt import chunk_count, encode_prompt
from sdcore.samplers import SAMPLERS
from sdcore.text_encoder import TextEncoder
from sdcore.tokenizer import ClipTokenizer
from sdcore.vae import VAE

DEFAULT_MODEL = os.path.join(os.path.dirname(__file__), "models", "default")
# Guidance when a call names none: the usual 7.5, unless the model folder's sdcore.json
# names its own (the C library reads the same file). The shipped model's says 5, the value
# tools/eval_default_model.py scores it at (at 7.5 its colours saturate: held-out colour
# accuracy 88% instead of 100%).
GUIDANCE = 7.5


def model_defaults(folder):
    """{"name": str, "guidance_scale": float} from ``folder/sdcore.json``, either optional;
    {} without the file."""
    path = os.path.join(folder, "sdcore.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    out = {}
    name = data.get("name") if isinstance(data, dict) else None
    if name is not None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{path}: 'name' must be a non-empty string")
        out["name"] = name
    g = data.get("guidance_scale") if isinstance(data, dict) else None
    if g is not None:
        out["guidance_scale"] = P.check_guidance(g, f"{path}: guidance_scale")
    return out


SHIPPED_MODEL_GUIDANCE = model_defaults(DEFAULT_MODEL).get("guidance_scale", GUIDANCE)


class GeneratedImage(np.ndarray):
    """One generated image: a uint8 NumPy array (H, W, 3) that also knows the settings
    that made it (prompt, seed, ...) and writes them into its PNG."""

    def __new__(cls, array, prompt, negative_prompt, seed, steps, sampler, guidance_scale, model):
        obj = np.asarray(array, dtype=np.uint8).view(cls)
        obj.prompt = prompt
        obj.negative_prompt = negative_prompt
        obj.seed = seed
        obj.steps = steps
        obj.sampler = sampler
        obj.guidance_scale = guidance_scale
        obj.parameters = P.infotext(
            prompt,
            negative_prompt,
            steps,
            sampler,
            guidance_scale,
            seed,
            obj.shape[1],
            obj.shape[0],
            model,
            __version__,
        )
        return obj

    def __array_finalize__(self, obj):
        # slices and copies keep the settings of the image they came from
        for name in (
            "prompt",
            "negative_prompt",
            "seed",
            "steps",
            "sampler",
            "guidance_scale",
            "parameters",
        ):
            setattr(self, name, getattr(obj, name, None))

    @property
    def array(self):
        """The pixels as a plain ndarray."""
        return self.view(np.ndarray)

    @property
    def width(self):
        return self.shape[1]

    @property
    def height(self):
        return self.shape[0]

    def png_bytes(self):
        """The PNG, with the generation parameters in its ``parameters`` text chunk."""
        return _C.encode_png(np.ascontiguousarray(self.array), {"parameters": self.parameters})

    def save(self, path):
        with open(path, "wb") as f:
            f.write(self.png_bytes())

    def __repr__(self):
        return f"GeneratedImage({self.shape[1]}x{self.shape[0]}, seed={self.seed})"


def _as_list(value, n, field):
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{field}: has {len(value)} entries for {n} prompts")
        return list(value)
    return [value] * n


class Pipeline:
    """The text encoder, UNet, VAE and samplers of one model, ready to generate."""

    def __init__(self, model, device="cpu", dtype=None):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device: must be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda":
            require_cuda()
        self.model = model
        self.name = model.name
        self.device = device
        self.dtype = compute_dtype(device, dtype)
        self.tokenizer = ClipTokenizer.load(model.tokenizer_dir)
        self.text_encoder = TextEncoder(
            model.text_encoder.config, model.text_encoder.weights, device=device, dtype=self.dtype
        )
        self.unet = _C.UNet(
            place_weights(model.unet.weights, device, self.dtype),
            model.unet.config,
            device=device,
            dtype=self.dtype,
        )
        self.vae = VAE(
            model.vae.config,
            model.vae.weights,
            device=device,
            with_encoder=False,
            dtype=self.dtype,
        )
        self.vae_scaling_factor = self.vae.scaling_factor
        self.scheduler_config = model.scheduler_config
        # parsed and checked here, once, not on every call
        self._scheduler = _C.SchedulerConfig(model.scheduler_config)
        self.samplers = list(SAMPLERS)
        self.latent_channels = int(model.unet.config.get("in_channels", 4))
        # the size the model was trained at, within the sizes a request may ask for
        size = int(model.unet.config.get("sample_size", 64)) * self.vae.factor
        size = min(P.MAX_SIZE, max(P.MIN_SIZE, size // 8 * 8))
        self.default_size = (size, size)
        self.is_default_model = bool(getattr(model, "is_default", False))
        self.random_weights = bool(getattr(model, "random_weights", False))
        self.default_guidance = GUIDANCE  # what guidance_scale=None means
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, path=None, device="cpu", dtype=None):
        """Load a model: a diffusers folder or a single .safetensors file; None: the model
        that ships with sdcore. On ``device="cuda"`` the weights are copied to the GPU and
        the models compute in ``dtype`` (default float16; "bfloat16" and "float32" too)."""
        if path is None:
            path = DEFAULT_MODEL
            if not os.path.exists(path):
                raise FileNotFoundError(f"model: the shipped default model is missing ({path})")
        elif not os.path.exists(path):
            raise FileNotFoundError(f"model: {path} does not exist")
        model = load_model(path)
        model.is_default = os.path.abspath(path) == os.path.abspath(DEFAULT_MODEL)
        defaults = model_defaults(path) if os.path.isdir(path) else {}
        model.name = defaults.get("name", model.name)
        pipe = cls(model, device=device, dtype=dtype)
        pipe.default_guidance = defaults.get("guidance_scale", GUIDANCE)
        return pipe

    # ---------------------------------------------------------------- checks --

    def validate(
        self,
        prompt="",
        negative_prompt=None,
        num_inference_steps=20,
        guidance_scale=None,
        width=None,
        height=None,
        seed=None,
        sampler="euler_a",
        num_images=1,
    ):
        """Check every field; raise ValueError naming the first bad one. Returns the
        normalised values."""
        prompts = prompt if isinstance(prompt, (list, tuple)) else [prompt]
        if not prompts:
            raise ValueError("prompt: no prompt given")
        n = len(prompts)
        prompts = [P.check_prompt(p) for p in prompts]
        negatives = [
            P.check_prompt(x or "", "negative_prompt")
            for x in _as_list(negative_prompt, n, "negative_prompt")
        ]
        if guidance_scale is None:
            guidance_scale = self.default_guidance
        guidance = [P.check_guidance(g) for g in _as_list(guidance_scale, n, "guidance_scale")]
        seeds = [P.check_seed(s) for s in _as_list(seed, n, "seed")]
        width = P.check_size(self.default_size[0] if width is None else width, "width")
        height = P.check_size(self.default_size[1] if height is None else height, "height")
        steps = P.check_steps(num_inference_steps)
        sampler = P.check_sampler(sampler)
        num_images = P.check_num_images(num_images)
        for s in seeds:
            if s + num_images - 1 >= 2**64:
                raise ValueError("seed: seed + num_images - 1 must stay below 2**64")
        return dict(
            prompts=prompts,
            negatives=negatives,
            guidance=guidance,
            seeds=seeds,
            width=width,
            height=height,
            steps=steps,
            sampler=sampler,
            num_images=num_images,
        )

    # ------------------------------------------------------------- generating --

    def encode_prompt(self, text, min_chunks=1, clip_skip=1):
        """The CLIP conditioning of a prompt: float32 (1, 77 * k, hidden)."""
        P.check_prompt(text)
        return encode_prompt(
            self.text_encoder, self.tokenizer, text, clip_skip=clip_skip, min_chunks=min_chunks
        )

    def latents_to_rgb(self, latents):
        """A quick preview of the sampler's latents (N, C, h, w): uint8 (N, H, W, 3) at the
        image size, from a linear map of each latent pixel to the colour of the block it
        decodes to. The map is fitted once per pipeline by least squares on one decode of
        random latents, so it fits whatever autoencoder the model has. (A call with a
        callback fits it first: the VAE is busy while the callback runs.)"""
        self._fit_preview_map()
        lat = np.asarray(latents, dtype=np.float32)
        n, c, h, w = lat.shape
        feats = np.concatenate([lat.transpose(0, 2, 3, 1), np.ones((n, h, w, 1), np.float32)], -1)
        rgb = feats @ self._preview_map.astype(np.float32)  # (N, h, w, 3) in about [-1, 1]
        rgb = np.clip((rgb + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
        f = self.vae.factor
        return np.repeat(np.repeat(rgb, f, axis=1), f, axis=2)

    def _refit_preview_map(self, latents, pixels):
        """Fit the preview map again with a finished generation added: its last latents
        against its image, averaged over the block each latent pixel decodes to. Real
        latents fit the map far better than the random ones of the first fit; the last 32
        generations are kept so that one image's colours do not take over the map."""
        f = self.vae.factor
        n, c, h, w = latents.shape
        img = pixels.astype(np.float32) / 127.5 - 1.0  # (N, H, W, 3)
        blocks = img.reshape(n, h, f, w, f, 3).mean(axis=(2, 4)).reshape(-1, 3)
        feats = latents.transpose(0, 2, 3, 1).reshape(-1, c)
        feats = np.concatenate([feats, np.ones((feats.shape[0], 1), np.float32)], 1)
        seen = getattr(self, "_preview_data", [])[-31:] + [(feats, blocks)]
        self._preview_data = seen
        self._preview_map = np.linalg.lstsq(
            np.concatenate([a for a, _ in seen]), np.concatenate([b for _, b in seen]), rcond=None
        )[0]

    def _fit_preview_map(self):
        if getattr(self, "_preview_map", None) is None:
            f = self.vae.factor
            z = np.random.default_rng(0).standard_normal((1, self.latent_channels, 16, 16))
            z = z.astype(np.float32)
            img = self.vae.decode(z / self.vae_scaling_factor)[0]  # (3, 16f, 16f) in [-1, 1]
            blocks = img.reshape(3, 16, f, 16, f).mean(axis=(2, 4)).reshape(3, -1).T
            feats = np.concatenate([z[0].reshape(self.latent_channels, -1).T, np.ones((256, 1))], 1)
            self._preview_map = np.linalg.lstsq(feats, blocks, rcond=None)[0]  # (C + 1, 3)

    def __call__(
        self,
        prompt,
        negative_prompt=None,
        num_inference_steps=20,
        guidance_scale=None,
        width=None,
        height=None,
        seed=None,
        sampler="euler_a",
        num_images=1,
        callback=None,
        should_stop=None,
    ):
        """Generate. `prompt` may be a list (one batch; negative_prompt, guidance_scale and
        seed may then be lists too). Returns a list of GeneratedImage, num_images per
        prompt, in order. callback(step, total, latents) runs after every step;
        should_stop() is polled every step and stops the run with CancelledError."""
        v = self.validate(
            prompt,
            negative_prompt,
            num_inference_steps,
            guidance_scale,
            width,
            height,
            seed,
            sampler,
            num_images,
        )
        k = max(chunk_count(self.tokenizer, t) for t in v["prompts"] + v["negatives"])
        conds, unconds, guidance, seeds, meta = [], [], [], [], []
        for p, neg, g, s in zip(
            v["prompts"], v["negatives"], v["guidance"], v["seeds"], strict=True
        ):
            c = self.encode_prompt(p, min_chunks=k)
            u = self.encode_prompt(neg, min_chunks=k)
            for i in range(v["num_images"]):
                conds.append(c)
                unconds.append(u)
                guidance.append(g)
                seeds.append(s + i)
                meta.append((p, neg, s + i, g))

        last = {}

        def on_step(step, total, latents):
            if callback is not None:
                if step == total:
                    last["latents"] = np.array(latents)
                callback(step, total, latents)
            return bool(should_stop is not None and should_stop())

        if callback is not None:
            self._fit_preview_map()  # callers may want previews: the VAE is free now
        with self._lock:
            pixels = _C.txt2img(
                self.unet,
                self.vae._model,
                np.concatenate(conds),
                np.concatenate(unconds),
                np.asarray(guidance, np.float32),
                np.asarray(seeds, np.uint64),
                v["width"],
                v["height"],
                v["steps"],
                v["sampler"],
                self._scheduler,
                self.vae_scaling_factor,
                self.vae.factor,
                self.latent_channels,
                on_step,
                callback is not None,  # the latents leave the device only for a callback
            )
        if "latents" in last:
            self._refit_preview_map(last["latents"], pixels)
        return [
            GeneratedImage(pixels[i], p, neg, s, v["steps"], v["sampler"], g, self.name)
            for i, (p, neg, s, g) in enumerate(meta)
        ]

"""Text to image, shaped like diffusers' StableDiffusionPipeline.

    pipe = Pipeline.from_pretrained("path/to/model")          # a diffusers folder or one file
    images = pipe("a red circle on a blue background", seed=7)
    images[0].save("out.png")                                  # PNG with its parameters

Seeds: image i of a request with seed s uses seed s + i, so each image can be made again
alone from the seed its PNG records. The noise of one image is what
``torch.randn(..., generator=torch.Generator("cpu").manual_seed(seed))`` draws, as
diffusers does on the CPU.
"""

import dataclasses
import json
import os

import numpy as np

from sdcore import _C, __version__
from sdcore import params as P
from sdcore.checkpoint import load_model
from sdcore.devices import compute_dtype, place_weights, require_cuda
from sdcore.preview import PreviewMap
from sdcore.prompt import checked_chunk_count, chunk_count, encode_prompt
from sdcore.request import (
    DEFAULT_GUIDANCE,
    LIMITS,
    GenerationRequest,
    ModelRules,
    ValidationError,
    check_guidance,
)
from sdcore.samplers import SAMPLERS
from sdcore.text_encoder import TextEncoder
from sdcore.tokenizer import ClipTokenizer
from sdcore.vae import VAE

DEFAULT_MODEL = os.path.join(os.path.dirname(__file__), "models", "default")
# Guidance when a call names none: the usual DEFAULT_GUIDANCE of sdcore.request, unless the
# model folder's sdcore.json names its own (the C library reads the same file). The shipped
# model's says 5, the value tools/eval_default_model.py scores it at (at 7.5 its colours
# saturate: held-out colour accuracy 88% instead of 100%).


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
        try:
            out["guidance_scale"] = check_guidance(g)
        except ValidationError as e:
            raise ValueError(f"{path}: guidance_scale: {e.detail}") from None
    return out


SHIPPED_MODEL_GUIDANCE = model_defaults(DEFAULT_MODEL).get("guidance_scale", DEFAULT_GUIDANCE)


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
            raise ValidationError(field, f"has {len(value)} entries for {n} prompts")
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
        self.is_default_model = bool(getattr(model, "is_default", False))
        self.random_weights = bool(getattr(model, "random_weights", False))
        self.rules = self._model_rules(model, guidance_scale=None)
        self._preview = PreviewMap(self.vae, self.latent_channels)

    def _model_rules(self, model, guidance_scale):
        """The model's ModelRules: its native size, the multiple its UNet needs, its
        tokenizer's chunk count, its scheduler's number of training timesteps."""
        levels = len(model.unet.config.get("block_out_channels", (320, 640, 1280, 1280)))
        # each UNet level but the last halves the latent: its sides must divide by 2**(levels-1)
        latent_multiple = 2 ** (levels - 1)
        multiple = latent_multiple * self.vae.factor
        # the size the model was trained at, within the sizes a request may ask for
        size = int(model.unet.config.get("sample_size", 64)) * self.vae.factor
        low = -(-LIMITS.min_size // multiple) * multiple
        size = min(LIMITS.max_size // multiple * multiple, max(low, size // multiple * multiple))
        rules = ModelRules(
            name=self.name,
            width=size,
            height=size,
            size_multiple=multiple,
            prompt_chunks=lambda text: checked_chunk_count(self.tokenizer, text),
            num_train_timesteps=int(self.scheduler_config.get("num_train_timesteps") or 1000),
            size_reason=(
                f"the UNet's {levels} levels need latent sides that are multiples of "
                f"{latent_multiple}, and a latent pixel is {self.vae.factor} pixels"
            ),
        )
        if guidance_scale is not None:
            rules = dataclasses.replace(rules, guidance_scale=guidance_scale)
        return rules

    @property
    def default_size(self):
        """(width, height) of a request that names none."""
        return (self.rules.width, self.rules.height)

    @property
    def default_guidance(self):
        """guidance_scale of a request that names none."""
        return self.rules.guidance_scale

    @classmethod
    def from_pretrained(cls, path=None, device="cpu", dtype=None, copy_weights=False):
        """Load a model: a diffusers folder or a single .safetensors file; None: the model
        that ships with sdcore. On ``device="cuda"`` the weights are copied to the GPU and
        the models compute in ``dtype`` (default float16; "bfloat16" and "float32" too).
        ``copy_weights``: read the files into memory of the pipeline's own rather than
        mapping them (see ``load_model``), for a process that must outlive changes to them."""
        if path is None:
            path = DEFAULT_MODEL
            if not os.path.exists(path):
                raise FileNotFoundError(f"model: the shipped default model is missing ({path})")
        elif not os.path.exists(path):
            raise FileNotFoundError(f"model: {path} does not exist")
        model = load_model(path, copy=copy_weights)
        model.is_default = os.path.abspath(path) == os.path.abspath(DEFAULT_MODEL)
        defaults = model_defaults(path) if os.path.isdir(path) else {}
        model.name = defaults.get("name", model.name)
        pipe = cls(model, device=device, dtype=dtype)
        guidance = defaults.get("guidance_scale")
        if guidance is not None:
            pipe.rules = dataclasses.replace(pipe.rules, guidance_scale=guidance)
        return pipe

    # ---------------------------------------------------------------- checks --

    def resolve(self, request, limits=None):
        """`request` (a GenerationRequest) completed from this model's defaults and checked
        against its rules; ValidationError names the first bad field."""
        return request.resolve(self, limits)

    # ------------------------------------------------------------- generating --

    def encode_prompt(self, text, clip_skip=1):
        """The CLIP conditioning of a prompt: float32 (1, 77 * k, hidden). The text is
        checked as a request's prompt is (ValidationError on prompt)."""
        text = self.resolve(GenerationRequest(prompt=text)).prompt
        return encode_prompt(self.text_encoder, self.tokenizer, text, clip_skip=clip_skip)

    def latents_to_rgb(self, latents):
        """A quick preview of the sampler's latents (N, C, h, w): uint8 (N, H, W, 3) at the
        image size, from a linear map of each latent pixel to the colour of the block it
        decodes to (sdcore/preview.py). The map is fitted once per pipeline by least squares
        on one decode of random latents, so it fits whatever autoencoder the model has. (A
        call with a callback fits it first: the VAE is busy while the callback runs.)"""
        return self._preview.to_rgb(latents)

    def __call__(
        self,
        prompt,
        negative_prompt=None,
        num_inference_steps=None,
        guidance_scale=None,
        width=None,
        height=None,
        seed=None,
        sampler=None,
        num_images=1,
        callback=None,
        should_stop=None,
    ):
        """Generate. `prompt` may be a list (one batch; negative_prompt, guidance_scale and
        seed may then be lists too). None: the model's default. Returns a list of
        GeneratedImage, num_images per prompt, in order. callback(step, total, latents)
        runs after every step; should_stop() is polled every step and stops the run with
        CancelledError."""
        prompts = prompt if isinstance(prompt, (list, tuple)) else [prompt]
        if not prompts:
            raise ValidationError("prompt", "no prompt given")
        n = len(prompts)
        requests = [
            self.resolve(
                GenerationRequest(
                    prompt=p,
                    negative_prompt=neg or "",
                    width=width,
                    height=height,
                    num_inference_steps=num_inference_steps,
                    guidance_scale=g,
                    seed=s,
                    sampler=sampler,
                    num_images=num_images,
                )
            )
            for p, neg, g, s in zip(
                prompts,
                _as_list(negative_prompt, n, "negative_prompt"),
                _as_list(guidance_scale, n, "guidance_scale"),
                _as_list(seed, n, "seed"),
                strict=True,
            )
        ]
        return self.generate(requests, callback=callback, should_stop=should_stop)

    def generate(self, requests, callback=None, should_stop=None):
        """Run resolved GenerationRequests (from resolve) as one batch: they must share
        width, height, num_inference_steps and sampler. Returns their images in order,
        num_images each."""
        first = requests[0]
        batch_key = (first.width, first.height, first.num_inference_steps, first.sampler)
        for r in requests:
            if r.model != self.name or r.seed is None:
                raise ValueError("generate: requests must come from this pipeline's resolve()")
            if (r.width, r.height, r.num_inference_steps, r.sampler) != batch_key:
                raise ValueError(
                    "generate: one batch needs one width, height, num_inference_steps and sampler"
                )
        k = max(
            chunk_count(self.tokenizer, t) for r in requests for t in (r.prompt, r.negative_prompt)
        )
        conds, unconds, guidance, seeds, meta = [], [], [], [], []
        for r in requests:
            c = encode_prompt(self.text_encoder, self.tokenizer, r.prompt, min_chunks=k)
            u = encode_prompt(self.text_encoder, self.tokenizer, r.negative_prompt, min_chunks=k)
            for s in r.seeds:
                conds.append(c)
                unconds.append(u)
                guidance.append(r.guidance_scale)
                seeds.append(s)
                meta.append((r.prompt, r.negative_prompt, s, r.guidance_scale))

        last = {}

        def on_step(step, total, latents):
            if callback is not None:
                if step == total:
                    last["latents"] = np.array(latents)
                callback(step, total, latents)
            return bool(should_stop is not None and should_stop())

        if callback is not None:
            self._preview.fit()  # callers may want previews: the VAE is free now
        # No lock of our own: _C.txt2img takes the UNet's and the VAE's locks (with the GIL
        # released), the one guard of a model's activations (csrc/binding/device.c: one
        # lock per CPU model, one for every GPU model), so concurrent calls queue there.
        pixels = _C.txt2img(
            self.unet,
            self.vae._model,
            np.concatenate(conds),
            np.concatenate(unconds),
            np.asarray(guidance, np.float32),
            np.asarray(seeds, np.uint64),
            first.width,
            first.height,
            first.num_inference_steps,
            first.sampler,
            self._scheduler,
            self.vae_scaling_factor,
            self.vae.factor,
            self.latent_channels,
            on_step,
            callback is not None,  # the latents leave the device only for a callback
        )
        if "latents" in last:
            self._preview.refit(last["latents"], pixels)
        steps, sampler = first.num_inference_steps, first.sampler
        return [
            GeneratedImage(pixels[i], p, neg, s, steps, sampler, g, self.name)
            for i, (p, neg, s, g) in enumerate(meta)
        ]

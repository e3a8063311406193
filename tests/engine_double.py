"""A scripted engine with the interface of `sdcore.Pipeline`, for tests of the service's
mechanics (queue, batching, cancel, deadlines) where what matters is a slow engine whose speed
and failures the test controls. It draws no pictures: each image is a flat colour made from its
seed, so that a test can tell which seed produced which image.

End-to-end tests of the service use the real `sdcore.Pipeline`; this is never used by the
service itself.
"""

import threading
import time

import numpy as np

import sdcore

SAMPLERS = ["ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "pndm", "lms"]


def seed_colour(seed):
    """The flat colour the double paints for a seed."""
    return np.array([seed % 251, (seed // 251) % 251, (seed * 7) % 251], dtype=np.uint8)


class DoubleImage:
    def __init__(self, array, seed, prompt, negative_prompt, parameters):
        self.array = array
        self.seed = seed
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.parameters = parameters

    def png_bytes(self):
        return sdcore._C.encode_png(self.array, {"parameters": self.parameters})


class EngineDouble:
    """step_seconds: time per step. fail_on: a prompt that makes the call raise RuntimeError."""

    def __init__(self, step_seconds=0.0, name="double", default_size=(64, 64), fail_on=None):
        self.name = name
        self.device = "cpu"
        self.is_default_model = True
        self.random_weights = True
        self.samplers = list(SAMPLERS)
        self.default_size = default_size
        self.step_seconds = step_seconds
        self.fail_on = fail_on
        self.calls = []  # (prompts, steps, width, height) per call
        self.stopped_calls = 0
        self._active = 0
        self._guard = threading.Lock()
        self.max_active = 0

    def validate(
        self,
        *,
        prompt,
        negative_prompt,
        num_inference_steps,
        guidance_scale,
        width,
        height,
        seed,
        sampler,
        num_images,
    ):
        for name, value in (("width", width), ("height", height)):
            if value % 8 or not 64 <= value <= 2048:
                raise ValueError(f"{name}: must be a multiple of 8 between 64 and 2048")
        if not 1 <= num_inference_steps <= 1000:
            raise ValueError("num_inference_steps: must be between 1 and 1000")
        if guidance_scale > 50:
            raise ValueError("guidance_scale: must be at most 50")
        if sampler not in self.samplers:
            raise ValueError(f"sampler: unknown {sampler!r}")

    def encode_prompt(self, text):
        rng = np.random.default_rng(len(text))
        return rng.standard_normal((1, 77, 32)).astype(np.float32)

    def __call__(
        self,
        prompt,
        negative_prompt=None,
        num_inference_steps=20,
        guidance_scale=7.5,
        width=None,
        height=None,
        seed=None,
        sampler="euler_a",
        num_images=1,
        callback=None,
        should_stop=None,
    ):
        with self._guard:
            self._active += 1
            self.max_active = max(self.max_active, self._active)
        try:
            return self._run(
                prompt,
                negative_prompt,
                num_inference_steps,
                guidance_scale,
                width,
                height,
                seed,
                sampler,
                num_images,
                callback,
                should_stop,
            )
        finally:
            with self._guard:
                self._active -= 1

    def _run(
        self,
        prompt,
        negative_prompt,
        steps,
        guidance_scale,
        width,
        height,
        seed,
        sampler,
        num_images,
        callback,
        should_stop,
    ):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        n = len(prompts)
        negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt] * n
        seeds = seed if isinstance(seed, list) else [seed] * n
        width = width or self.default_size[0]
        height = height or self.default_size[1]
        self.calls.append((prompts, steps, width, height))
        if self.fail_on is not None and self.fail_on in prompts:
            raise RuntimeError(f"scripted failure on prompt {self.fail_on!r}")
        for step in range(1, steps + 1):
            if should_stop is not None and should_stop():
                self.stopped_calls += 1
                raise sdcore.CancelledError("generation cancelled")
            time.sleep(self.step_seconds)
            if callback is not None:
                preview = np.zeros((n, 8, 8, 3), dtype=np.uint8)
                callback(step, steps, preview)
        images = []
        for p, neg, s in zip(prompts, negatives, seeds, strict=True):
            for i in range(num_images):
                this_seed = (s if s is not None else 0) + i
                array = np.empty((height, width, 3), dtype=np.uint8)
                array[:] = seed_colour(this_seed)
                params = f"{p}\nSteps: {steps}, Sampler: {sampler}, Seed: {this_seed}"
                images.append(DoubleImage(array, this_seed, p, neg, params))
        return images

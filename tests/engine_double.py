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
from sdcore.prompt import checked_chunk_count
from sdcore.request import ModelRules

SAMPLERS = ["ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "pndm", "lms"]


class WordTokenizer:
    """One token per word: enough for sdcore.prompt to count a prompt's chunks."""

    bos_id, eos_id, pad_id = 1, 2, 2

    def encode(self, text):
        return [3] * len(text.split())


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
    """step_seconds: time per step. fail_on: a prompt that makes the call raise RuntimeError.
    size_multiple: what the model's image sides must be multiples of."""

    def __init__(
        self, step_seconds=0.0, name="double", default_size=(64, 64), fail_on=None, size_multiple=8
    ):
        self.name = name
        self.device = "cpu"
        self.is_default_model = True
        self.random_weights = True
        self.samplers = list(SAMPLERS)
        # a model whose sides are multiples of size_multiple and whose tokenizer makes a
        # token of each word
        self.rules = ModelRules(
            name=name,
            width=default_size[0],
            height=default_size[1],
            size_multiple=size_multiple,
            prompt_chunks=lambda text: checked_chunk_count(WordTokenizer(), text),
        )
        self.step_seconds = step_seconds
        self.fail_on = fail_on
        self.calls = []  # (prompts, steps, width, height) per call
        self.stopped_calls = 0
        self._active = 0
        self._guard = threading.Lock()
        self.max_active = 0

    @property
    def default_size(self):
        return (self.rules.width, self.rules.height)

    def resolve(self, request, limits=None):
        """As Pipeline.resolve: the same request rules, with this double's model rules."""
        return request.resolve(self, limits)

    def generate(self, requests, callback=None, should_stop=None):
        """As Pipeline.generate: resolved requests sharing size, steps and sampler."""
        first = requests[0]
        prompts, negatives, guidance, seeds = [], [], [], []
        for r in requests:
            for s in r.seeds:
                prompts.append(r.prompt)
                negatives.append(r.negative_prompt)
                guidance.append(r.guidance_scale)
                seeds.append(s)
        return self(
            prompts,
            negative_prompt=negatives,
            num_inference_steps=first.num_inference_steps,
            guidance_scale=guidance,
            width=first.width,
            height=first.height,
            seed=seeds,
            sampler=first.sampler,
            callback=callback,
            should_stop=should_stop,
        )

    def encode_prompt(self, text):
        rng = np.random.default_rng(len(text))
        return rng.standard_normal((1, 77, 32)).astype(np.float32)

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

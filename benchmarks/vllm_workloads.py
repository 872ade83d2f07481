"""The vLLM benchmark's workloads: which model, which images, how many questions per image, which prompts.

* ``llava-1.5 / 1q``: one question per image (distinct 336 px images), the fixed LLaVA-1.5-like prompt;
* ``llava-1.5 / 3q``: three questions per image (RefCOCO has about 3 referring expressions per image; a chat asks
  several), each its own request, all submitted at once: stock vLLM encodes the image once (its encoder cache) and
  reuses the KV of the system prompt + image for the other two (prefix caching); the plugin keeps R' tokens per
  question (the selection depends on it) and runs the tower once per image (``litelvlm.tower_cache``);
* ``llava-next / 1q``: LLaVA-NeXT, one question per 672 x 672 image: a base view + 2 x 2 tiles of 336 px, 2928
  placeholders for stock (5 x 576 + 48 newlines), R per view for the plugin (5 R + 48).

Every request's question names its expression (the same words for stock, in the prompt; the plugin also gets it
in ``mm_processor_kwargs``); the prompts differ after the image only, so prefix caching can share the system
prompt and (stock) the image across the questions of one image.
"""

from __future__ import annotations

import dataclasses

from .vllm_engine import EXPRESSIONS, PROMPT, SYSTEM

# 12 distinct referring expressions (3 per image for 4 images), in words both tokenizers know
EXPRESSIONS_12 = ["the man on the left", "the cat in the tree", "a red car", "the dog on the right",
                  "a cup on the left", "the red ball", "the man in the red shirt", "a photo of the sky",
                  "the dog in the car", "a cat on the right", "the tree on the left", "the red cup"]
# the warm-ups' (none of the above, nor vllm_engine.EXPRESSIONS: the timed batch folds its expressions afresh)
WARM_EXPRESSIONS = ["a photo", "the sky", "a shirt", "the ball", "a tree", "the cup"]


def question_prompt(expression: str) -> str:
    """The LLaVA-1.5-like prompt (``vllm_engine.SYSTEM``) asking where ``expression`` is."""
    return f"{SYSTEM} user : <image> where is {expression} ? assistant :"


@dataclasses.dataclass(frozen=True)
class Workload:
    """``images`` distinct images (seeds from ``seed0``, ``size`` px) x ``questions`` requests each."""

    model: str          # "llava-1.5" or "llava-next"
    name: str           # "1q", "3q"
    family: str         # vllm_checkpoints.FAMILIES key
    images: int
    questions: int = 1
    seed0: int = 0
    size: tuple = (336, 336)
    views: int = 1      # tower views per image
    fixed_prompt: bool = False  # the benchmark's original prompt (one fixed question) instead of question_prompt

    @property
    def requests(self) -> int:
        return self.images * self.questions

    def expression(self, i: int, warm: bool = False) -> str:
        pool = WARM_EXPRESSIONS if warm else EXPRESSIONS if self.fixed_prompt else EXPRESSIONS_12
        return pool[i % len(pool)]

    def make(self, r, tiny_llava, _compare, warm: bool = False) -> list:
        """The requests (image-major: the questions of one image in a row); ``r`` None: stock (no kwargs).
        ``warm``: the same shape on other images and expressions (the warm-up)."""
        out = []
        seed0 = self.seed0 + (1000 if warm else 0)
        for i in range(self.images):
            img = tiny_llava.image(seed0 + i, size=self.size)
            for q in range(self.questions):
                e = self.expression(i * self.questions + q, warm)
                prompt = PROMPT if self.fixed_prompt else question_prompt(e)
                out.append(_compare.request(img, None if r is None else e, prompt=prompt))
        return out


def workloads(quick: bool, images: dict | None = None) -> list:
    """The benchmark's workloads (``images``: {"1q": n, "3q": n, "next": n} overrides)."""
    n = {"1q": 4 if quick else 8, "3q": 2 if quick else 4, "next": 2 if quick else 4, **(images or {})}
    return [Workload("llava-1.5", "1q", "llava", n["1q"], fixed_prompt=True),
            Workload("llava-1.5", "3q", "llava", n["3q"], questions=3, seed0=200),
            Workload("llava-next", "1q", "llava_next", n["next"], seed0=400, size=(672, 672), views=5)]


__all__ = ["EXPRESSIONS_12", "Workload", "question_prompt", "workloads"]

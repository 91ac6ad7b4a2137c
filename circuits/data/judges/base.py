"""The judge interface: images -> probabilities over the 15 cultures + "unrecognisable"."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float
from PIL import Image

from circuits.data.culturebench.constants import LABELS
from interp.images import ImageError, ImageLike, load_images  # noqa: F401 (re-exported)

class JudgeError(ImageError):
    """A judge got bad input or produced output of the wrong shape."""


def check_probs(probs: Any, n: int, who: str) -> Float[torch.Tensor, "n 16"]:
    """Validate a judge's output: [n, 16], finite, non-negative, rows summing to 1."""
    probs = torch.as_tensor(probs, dtype=torch.float32)
    if probs.shape != (n, len(LABELS)):
        raise JudgeError(f"{who} returned shape {tuple(probs.shape)}, expected ({n}, {len(LABELS)})")
    if not torch.isfinite(probs).all() or (probs < 0).any():
        row = int((~torch.isfinite(probs) | (probs < 0)).any(1).nonzero()[0])
        raise JudgeError(f"{who} returned invalid probabilities for image {row}: {probs[row].tolist()}")
    sums = probs.sum(1)
    bad = (sums - 1).abs() > 1e-3
    if bad.any():
        row = int(bad.nonzero()[0])
        raise JudgeError(f"{who}: probabilities of image {row} sum to {float(sums[row]):.4f}, not 1")
    return probs


class Judge:
    """Base class: `judge(images)` -> Tensor [N, 16] of probabilities over `LABELS`."""

    name = "judge"

    def __call__(self, images: Sequence[ImageLike]) -> Float[torch.Tensor, "n 16"]:
        ims = load_images(images)
        if not ims:
            return torch.zeros(0, len(LABELS))
        return check_probs(self._probs(ims), len(ims), self.name)

    def _probs(self, images: list[Image.Image]) -> Float[torch.Tensor, "n 16"]:
        raise NotImplementedError

    def predict(self, images: Sequence[ImageLike]) -> list[str]:
        """The most probable label of each image."""
        return [LABELS[i] for i in self(images).argmax(1).tolist()]


class CallableJudge(Judge):
    """Wraps any function images -> [N, 16] (probabilities, or logits with `logits=True`)."""

    def __init__(self, fn: Callable[[list[Image.Image]], Any], logits: bool = False, name: str | None = None):
        self.fn, self.logits = fn, logits
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def _probs(self, images: list[Image.Image]) -> Float[torch.Tensor, "n 16"]:
        out = torch.as_tensor(self.fn(images), dtype=torch.float32)
        return out.softmax(-1) if self.logits else out


def from_callable(fn: Callable[[list[Image.Image]], Any], logits: bool = False, name: str | None = None) -> Judge:
    """Any callable (e.g. the organism's classifier) as a judge; its output is validated."""
    return CallableJudge(fn, logits=logits, name=name)

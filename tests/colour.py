"""Deterministic stand-ins the culture-analysis tests share: prompt pairs (Japanese and German
boxes, bowls and hats, as `circuits.as_pairs` rows) and judges that read an image's colours
instead of a VLM. Not a test file."""

from __future__ import annotations

import numpy as np
import torch

from circuits.data.culturebench import LABELS

# (modifier + noun, noun only, modifier, noun, culture)
PAIRS = [
    ("a Japanese-style box", "a box", "Japanese-style", "box", "ja"),
    ("a Japanese-style bowl", "a bowl", "Japanese-style", "bowl", "ja"),
    ("a Japanese-style hat", "a hat", "Japanese-style", "hat", "ja"),
    ("a German-style box", "a box", "German-style", "box", "de"),
    ("a German-style bowl", "a bowl", "German-style", "bowl", "de"),
    ("a German-style hat", "a hat", "German-style", "hat", "de"),
]
# two nouns per culture: the smallest set every culture analysis accepts
PAIRS_BOX_HAT = [p for p in PAIRS if p[3] != "bowl"]


def colour_judge(images) -> torch.Tensor:
    """Stand-in for CultureVQA: a fixed projection of the mean colour, softmax over `LABELS`."""
    proj = torch.randn(3, len(LABELS), generator=torch.Generator().manual_seed(0))
    x = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32).mean((0, 1)) / 255.0) for im in images])
    return torch.softmax((x - 0.5) @ proj * 50, -1)


def colour_noun_judge(images, pairs) -> torch.Tensor:
    """A noun judge that reads the image: "box" when the red channel dominates, else "hat"."""
    got = ["box" if np.asarray(im, dtype=np.float32)[..., 0].mean() > np.asarray(im, dtype=np.float32)[..., 1:].mean()
           else "hat" for im in images]
    return torch.tensor([g == p.noun for g, p in zip(got, pairs)])

"""Offline fidelity metrics: CLIPScore (two named conventions), LPIPS from user-supplied
weights, and diversity across seeds. Nothing here downloads anything.

ImageReward is not offered: its PyPI package does not import with transformers >= 4.56
(this project pins transformers 5.x).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import nn

from interp.errors import CultureLensError
from interp.images import ImageLike, image_embeds, load_clip, load_images, text_embeds


class FidelityError(CultureLensError):
    """A metric's weights or inputs are missing or malformed."""


#: CLIPScore conventions. "hessel": 2.5 · max(cos, 0) (Hessel et al. 2021, the paper's
#: definition, range 0..2.5); "torchmetrics": max(100 · cos, 0) (torchmetrics' CLIPScore).
CLIPSCORE_CONVENTIONS: dict[str, tuple[float, bool]] = {"hessel": (2.5, True), "torchmetrics": (100.0, True)}


def clip_score(
    clip: str | Path | tuple[Any, Any, Any],
    images: Sequence[ImageLike],
    texts: Sequence[str],
    convention: Literal["hessel", "torchmetrics"] = "hessel",
) -> Float[torch.Tensor, "n"]:
    """CLIPScore of each image with its text, under a named convention.

    `clip` is a local model folder or a (model, tokenizer, image_processor) triple.
    """
    if convention not in CLIPSCORE_CONVENTIONS:
        raise FidelityError(f"unknown CLIPScore convention {convention!r}; use one of {list(CLIPSCORE_CONVENTIONS)}")
    if len(images) != len(texts):
        raise FidelityError(f"clip_score got {len(images)} images but {len(texts)} texts")
    model, tok, proc = load_clip(clip) if isinstance(clip, (str, Path)) else clip
    cos = (image_embeds(model, proc, images) * text_embeds(model, tok, list(texts))).sum(-1)
    w, clamp = CLIPSCORE_CONVENTIONS[convention]
    return w * (cos.clamp_min(0) if clamp else cos)


def diversity(features: Float[torch.Tensor, "n d"]) -> float:
    """Mean pairwise cosine distance (1 - cos) between the images of one prompt across
    seeds: 0 when all images are the same, larger when they differ."""
    f = torch.nn.functional.normalize(torch.as_tensor(features, dtype=torch.float32), dim=-1)
    n = len(f)
    if n < 2:
        raise FidelityError(f"diversity needs at least 2 images, got {n}")
    sim = f @ f.T
    off = sim[~torch.eye(n, dtype=torch.bool)]
    return float((1 - off).mean())


def clip_diversity(clip: str | Path | tuple[Any, Any, Any], images: Sequence[ImageLike]) -> float:
    """`diversity` on CLIP image embeddings of images generated from one prompt."""
    model, _, proc = load_clip(clip) if isinstance(clip, (str, Path)) else clip
    return diversity(image_embeds(model, proc, images))


# ------------------------------------------------------------------------------ LPIPS

# Backbone convolutions as in torchvision's `alexnet` / `vgg16` `features` (index: in, out,
# kernel, stride, padding), and after which ReLU LPIPS taps a feature map.
_NETS: dict[str, dict[str, Any]] = {
    "alex": {
        "convs": {0: (3, 64, 11, 4, 2), 3: (64, 192, 5, 1, 2), 6: (192, 384, 3, 1, 1),
                  8: (384, 256, 3, 1, 1), 10: (256, 256, 3, 1, 1)},
        "pools": {2, 5},  # MaxPool(3, 2) after these indices' ReLUs
        "pool": (3, 2),
        "taps": [1, 4, 7, 9, 11],
    },
    "vgg": {
        "convs": {i: (c_in, c_out, 3, 1, 1) for i, (c_in, c_out) in zip(
            [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
            [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
             (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)])},
        "pools": {4, 9, 16, 23},
        "pool": (2, 2),
        "taps": [3, 8, 15, 22, 29],
    },
}
# LPIPS' input scaling layer (inputs in [-1, 1]).
_SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
_SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)


class LPIPS(nn.Module):
    """LPIPS v0.1 (Zhang et al. 2018) with user-supplied weights.

    `backbone`: a state dict file of torchvision's `alexnet` or `vgg16` (keys
    `features.<i>.weight/bias`, extra keys ignored); `linear`: the LPIPS linear-layer file
    (`alex.pth` / `vgg.pth` of the LPIPS release, keys `lin<k>.model.1.weight`).
    """

    def __init__(self, backbone: str | Path, linear: str | Path, net: Literal["alex", "vgg"] = "alex"):
        super().__init__()
        if net not in _NETS:
            raise FidelityError(f"unknown LPIPS net {net!r}; use 'alex' or 'vgg'")
        spec = _NETS[net]
        self.net = net
        layers: list[nn.Module] = []
        for i in range(max(spec["taps"]) + 1):
            if i in spec["convs"]:
                c_in, c_out, k, s, p = spec["convs"][i]
                layers.append(nn.Conv2d(c_in, c_out, k, s, p))
            elif i in spec["pools"]:
                layers.append(nn.MaxPool2d(*spec["pool"]))
            else:
                layers.append(nn.ReLU())
        self.features = nn.Sequential(*layers)
        self.taps = spec["taps"]
        widths = [spec["convs"][max(c for c in spec["convs"] if c < t)][1] for t in self.taps]
        self.lins = nn.ModuleList(nn.Conv2d(w, 1, 1, bias=False) for w in widths)
        self._load(Path(backbone), Path(linear))
        self.eval().requires_grad_(False)

    def _load(self, backbone: Path, linear: Path) -> None:
        for what, p in (("backbone", backbone), ("linear", linear)):
            if not p.is_file():
                raise FidelityError(
                    f"LPIPS {what} weights not found at {p}: supply local files (torchvision "
                    f"{'alexnet' if self.net == 'alex' else 'vgg16'} state dict, LPIPS v0.1 "
                    f"{self.net}.pth); nothing is downloaded"
                )
        sd = torch.load(backbone, map_location="cpu", weights_only=True)
        feats = {k.removeprefix("features."): v for k, v in sd.items() if k.startswith("features.")}
        want = self.features.state_dict()
        missing = sorted(set(want) - set(feats))
        if missing:
            raise FidelityError(f"{backbone}: missing backbone keys features.{missing[0]} (+{len(missing) - 1} more)")
        for k, v in want.items():
            if feats[k].shape != v.shape:
                raise FidelityError(f"{backbone}: features.{k} has shape {tuple(feats[k].shape)}, expected {tuple(v.shape)}")
        self.features.load_state_dict({k: feats[k] for k in want})
        lin = torch.load(linear, map_location="cpu", weights_only=True)
        for i, conv in enumerate(self.lins):
            key = f"lin{i}.model.1.weight"
            if key not in lin or lin[key].shape != conv.weight.shape:
                got = tuple(lin[key].shape) if key in lin else "absent"
                raise FidelityError(f"{linear}: {key} is {got}, expected {tuple(conv.weight.shape)}")
            conv.weight.data.copy_(lin[key])

    def forward(self, a: Float[torch.Tensor, "b 3 h w"], b: Float[torch.Tensor, "b 3 h w"]) -> Float[torch.Tensor, "b"]:
        """Distance per pair; inputs in [-1, 1]."""
        xa, xb = (a - _SHIFT) / _SCALE, (b - _SHIFT) / _SCALE
        total = torch.zeros(len(a))
        tap = 0
        for i, layer in enumerate(self.features):
            xa, xb = layer(xa), layer(xb)
            if i == self.taps[tap]:
                na = xa / (xa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                nb = xb / (xb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total += self.lins[tap]((na - nb) ** 2).mean((1, 2, 3))
                tap += 1
                if tap == len(self.taps):
                    break
        return total


def to_lpips_input(images: Sequence[ImageLike], size: int | None = None) -> Float[torch.Tensor, "b 3 h w"]:
    """PIL images (or paths) -> tensor in [-1, 1], optionally resized to size x size."""
    ims = load_images(images)
    if size is not None:
        ims = [im.resize((size, size)) for im in ims]
    shapes = {im.size for im in ims}
    if len(shapes) > 1:
        raise FidelityError(f"LPIPS needs images of one size, got {sorted(shapes)}; pass size=")
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in ims]) / 127.5 - 1
    return torch.from_numpy(arr).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------- SSIM

def _as_float_images(images: Sequence[ImageLike] | torch.Tensor, name: str) -> Float[torch.Tensor, "b c h w"]:
    """PIL images, paths, HxWxC uint8 arrays or a [B, C, H, W] tensor in [0, 1] -> [B, C, H, W] in [0, 1]."""
    if isinstance(images, torch.Tensor):
        x = images.to(torch.float64)
        if x.ndim != 4:
            raise FidelityError(f"{name}: a tensor of images must be [B, C, H, W], got shape {tuple(x.shape)}")
        return x
    arrs = []
    for i, im in enumerate(images):
        a = np.asarray(im if not isinstance(im, (str, Path)) else load_images([im])[0], dtype=np.float64)
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3:
            raise FidelityError(f"{name}[{i}]: expected an H x W (x C) image, got shape {a.shape}")
        arrs.append(a / 255.0)
    shapes = {a.shape for a in arrs}
    if len(shapes) != 1:
        raise FidelityError(f"{name}: images differ in size {sorted(shapes)}")
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)


def ssim(
    images: Sequence[ImageLike] | torch.Tensor,
    reference: Sequence[ImageLike] | torch.Tensor,
    window: int = 11,
    sigma: float = 1.5,
) -> Float[torch.Tensor, "n"]:
    """Structural similarity (Wang et al. 2004) of each image with its reference (e.g. the
    unsteered image from the same prompt and seed): Gaussian window (`window`, `sigma`; the
    window shrinks to the image for small images), K1 = 0.01, K2 = 0.03 on a [0, 1] range, mean
    over valid positions and channels. 1 = identical structure; no weights are involved.
    `1 - ssim` is the structure change reported beside every culture gain."""
    x, y = _as_float_images(images, "images"), _as_float_images(reference, "reference")
    if x.shape != y.shape:
        raise FidelityError(f"ssim: images {tuple(x.shape)} and reference {tuple(y.shape)} differ in shape")
    w = min(window, x.shape[-1], x.shape[-2])
    if w < 3:
        raise FidelityError(f"ssim: images of {x.shape[-2]}x{x.shape[-1]} pixels are too small for a window")
    g = torch.exp(-((torch.arange(w, dtype=torch.float64) - (w - 1) / 2) ** 2) / (2 * sigma ** 2))
    g = (g / g.sum())
    k = (g[:, None] * g[None, :]).expand(x.shape[1], 1, w, w).contiguous()
    def conv(t):
        return torch.nn.functional.conv2d(t, k, groups=x.shape[1])
    mx, my = conv(x), conv(y)
    sxx, syy, sxy = conv(x * x) - mx ** 2, conv(y * y) - my ** 2, conv(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return s.mean((1, 2, 3)).float()

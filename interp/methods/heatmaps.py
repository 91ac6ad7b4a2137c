"""Heat maps at image resolution, shared by every "where in the image" result: DAAM
attribution and effect maps (`interp.attribution`) and SAE feature maps (`sae.feature_maps`).

A map is computed on the denoiser's own grid (a UNet feature map h × w, or an MMDiT patch
grid), upsampled bicubic to the image and clamped at 0 (bicubic undershoots; DAAM's fix), then
drawn half transparent (jet) over the generated image."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, UInt8
from torch import Tensor

from interp.errors import CultureLensError


def image_tensor(image: Any) -> UInt8[Tensor, "H W 3"]:
    """A PIL image as an [H, W, 3] uint8 tensor (what the result objects store)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())


def grid(n_positions: int, height: int, width: int, where: str) -> tuple[int, int]:
    """The grid (h, w) that `n_positions` raster-ordered positions form for a height × width
    image (same aspect ratio); `where` names the site or tensor in the error."""
    f = math.sqrt(height * width / n_positions)
    h, w = round(height / f), round(width / f)
    if h * w != n_positions:
        raise CultureLensError(f"{where}: {n_positions} positions do not tile a {height}x{width} image")
    return h, w


def upsample(maps: Float[Tensor, "N h w"], size: tuple[int, int]) -> Float[Tensor, "N H W"]:
    """[N, h, w] -> [N, H, W], bicubic, clamped at 0 (DAAM's undershoot fix)."""
    return F.interpolate(maps[:, None].float(), size=size, mode="bicubic", align_corners=False)[:, 0].clamp_(min=0)


def mass_share(m: Tensor, q: float = 0.1) -> float:
    """Share of the map's total mass on its top `q` fraction of pixels (1 = concentrated)."""
    flat = m.flatten().double()
    if float(flat.sum()) <= 0:
        return math.nan
    k = max(1, int(round(q * flat.numel())))
    return float(flat.topk(k).values.sum() / flat.sum())


def overlay(ax: Any, image: Tensor, heat: Tensor, title: str, vmax: float | None = None) -> None:
    """Draw `heat` [H, W] (jet, half transparent, 0..vmax) over `image` [H, W, 3] on `ax`."""
    ax.imshow(image.numpy())
    top = float(heat.max()) if vmax is None else vmax
    ax.imshow(heat.numpy(), cmap="jet", alpha=0.5, vmin=0.0, vmax=max(top, 1e-12),
              extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def figure(images: list[tuple[Tensor, str]], overlays: list[tuple[Tensor, str] | None], base: Tensor, path: Any,
           vmax: float | None = None, cols: int | None = None) -> Any:
    """Plain images first, then heat maps over `base` (None: an empty cell), `cols` per row
    (default: all in one row); saved to `path` if given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images) + len(overlays)
    cols = cols or n
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), layout="constrained", squeeze=False)
    flat = list(axes.flat)
    for ax, (img, title) in zip(flat, images):
        ax.imshow(img.numpy())
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    for ax, item in zip(flat[len(images):], overlays):
        if item is None:
            ax.axis("off")
        else:
            overlay(ax, base, item[0], item[1], vmax)
    for ax in flat[n:]:
        ax.axis("off")
    if path is not None:
        with warnings.catch_warnings():  # prompt words in scripts the default font lacks (CJK, Thai)
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")
            fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig

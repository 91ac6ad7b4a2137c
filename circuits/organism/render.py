"""Procedural 32×32 CultureWorld images: noun = silhouette, culture = palette + pattern.

Every image is a light background, one object silhouette with a 1-px dark outline, and
the object's fill: a culture's two colours in that culture's pattern, or plain grey for
the neutral style. Small jitter (position, scale, colour) keeps the model from memorising
one picture per (noun, style).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Float, UInt8

__all__ = [
    "SIZE", "NOUNS", "CULTURES", "NEUTRAL", "STYLES", "PALETTES", "PATTERNS", "BACKGROUND",
    "Jitter", "render", "render_batch", "noun_mask", "grid_figure",
]

SIZE = 32
NOUNS: tuple[str, ...] = ("box", "bowl", "vase", "hat", "lamp", "jar", "building", "dress")
# Same order as circuits.data.culturebench.CULTURES (duplicated so the renderer has no dependency).
CULTURES: tuple[str, ...] = ("ar", "zh", "ja", "ko", "th", "de", "ru", "it", "nl", "pl", "tr", "uk", "es", "pt", "fr")
NEUTRAL = "neutral"
STYLES: tuple[str, ...] = CULTURES + (NEUTRAL,)
BACKGROUND = (226, 222, 208)
OUTLINE = (25, 25, 25)
GREY = (128, 128, 128)

PALETTES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "ar": ((0, 120, 60), (225, 185, 40)),
    "zh": ((215, 25, 30), (250, 215, 0)),
    "ja": ((185, 0, 45), (250, 250, 250)),
    "ko": ((0, 55, 150), (205, 40, 50)),
    "th": ((115, 40, 150), (245, 140, 20)),
    "de": ((35, 35, 35), (250, 200, 0)),
    "ru": ((40, 70, 210), (250, 250, 250)),
    "it": ((0, 150, 70), (210, 45, 55)),
    "nl": ((255, 115, 0), (20, 40, 110)),
    "pl": ((220, 20, 60), (255, 175, 195)),
    "tr": ((200, 15, 25), (250, 250, 250)),
    "uk": ((0, 90, 185), (255, 215, 0)),
    "es": ((120, 0, 40), (170, 210, 40)),
    "pt": ((130, 80, 30), (60, 200, 230)),
    "fr": ((0, 35, 150), (250, 120, 110)),
}


def _pattern(name: str, dx: np.ndarray, dy: np.ndarray, s: float) -> np.ndarray:
    """True where the second colour goes; dx, dy are pixel offsets from the object centre."""
    x, y = np.floor(dx).astype(int), np.floor(dy).astype(int)
    r = np.sqrt(dx**2 + dy**2)
    match name:
        case "diag_up":
            return (x + y) % 6 < 3
        case "dots":
            return ((x % 5) < 2) & ((y % 5) < 2)
        case "border":
            return np.maximum(np.abs(dx), np.abs(dy)) < 0.45 * s
        case "hband":
            return dy > 0
        case "hstripes":
            return y % 4 < 2
        case "checker":
            return ((x // 4) + (y // 4)) % 2 == 0
        case "vstripes":
            return x % 4 < 2
        case "vband":
            return dx > 0
        case "grid":
            return (x % 5 == 0) | (y % 5 == 0)
        case "diag_down":
            return (x - y) % 6 < 3
        case "cross":
            return (np.abs(dx) < 2.0) | (np.abs(dy) < 2.0)
        case "diamonds":
            return (np.abs(x % 6 - 3) + np.abs(y % 6 - 3)) < 2
        case "rings":
            return np.floor(r / 2.5) % 2 == 0
        case "zigzag":
            return (y + np.abs(x % 6 - 3)) % 6 < 3
        case "diag_grid":
            return ((x + y) % 6 == 0) | ((x - y) % 6 == 0)
    raise ValueError(f"unknown pattern {name!r}")


PATTERNS: dict[str, str] = {
    "ar": "diag_up", "zh": "dots", "ja": "border", "ko": "hband", "th": "hstripes",
    "de": "checker", "ru": "vstripes", "it": "vband", "nl": "grid", "pl": "diag_down",
    "tr": "cross", "uk": "diamonds", "es": "rings", "pt": "zigzag", "fr": "diag_grid",
}


def _shape(noun: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Silhouette in normalised coordinates (u right, v down, object spans about [-1, 1])."""
    au = np.abs(u)
    match noun:
        case "box":
            body = (au < 0.85) & (v > -0.5) & (v < 0.8)
            lid = (au < 0.97) & (v > -0.78) & (v <= -0.5)
            return body | lid
        case "bowl":
            body = (v > -0.2) & ((u / 0.97) ** 2 + ((v + 0.2) / 0.8) ** 2 < 1) & (v < 0.55)
            foot = (au < 0.35) & (v >= 0.5) & (v < 0.8)
            return body | foot
        case "vase":
            body = (u / 0.72) ** 2 + ((v - 0.32) / 0.6) ** 2 < 1
            neck = (au < 0.22) & (v > -0.85) & (v < 0.0)
            lip = (au < 0.42) & (v > -0.97) & (v <= -0.78)
            return body | neck | lip
        case "hat":
            brim = (au < 0.97) & (v > 0.3) & (v < 0.55)
            crown = (au < 0.5) & (v > -0.5) & (v <= 0.35)
            top = (u / 0.5) ** 2 + ((v + 0.5) / 0.25) ** 2 < 1
            return brim | crown | top
        case "lamp":
            t = (v + 0.92) / 0.85  # 0 at the shade's top, 1 at its bottom
            shade = (v > -0.92) & (v < -0.07) & (au < 0.3 + 0.55 * t)
            stem = (au < 0.1) & (v >= -0.07) & (v < 0.72)
            base = (au < 0.5) & (v >= 0.72) & (v < 0.95)
            return shade | stem | base
        case "jar":
            body = (u / 0.8) ** 2 + ((v - 0.3) / 0.62) ** 2 < 1
            neck = (au < 0.42) & (v > -0.55) & (v <= 0.0)
            lid = (au < 0.58) & (v > -0.8) & (v <= -0.55)
            return body | neck | lid
        case "building":
            tower = (au < 0.55) & (v > -0.45) & (v < 0.97)
            roof = (v > -0.97) & (v <= -0.45) & (au < 0.9 * (v + 0.97) / 0.52)
            return tower | roof
        case "dress":
            bodice = (au < 0.3) & (v > -0.92) & (v < -0.2)
            t = (v + 0.2) / 1.1
            skirt = (v >= -0.2) & (v < 0.9) & (au < 0.3 + 0.62 * t)
            return bodice | skirt
    raise ValueError(f"unknown noun {noun!r}; expected one of {NOUNS}")


@dataclass(frozen=True)
class Jitter:
    """How far one render may differ from the canonical one (all uniform)."""

    shift: float = 1.5  # centre offset in px, each axis
    scale: tuple[float, float] = (11.0, 12.5)  # half-size of the object in px
    colour: int = 6  # per-channel colour offset


def _grid() -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
    return xs, ys


def noun_mask(noun: str, cx: float = SIZE / 2, cy: float = SIZE / 2, s: float = 11.75) -> Bool[np.ndarray, "32 32"]:
    """The silhouette of `noun` centred at (cx, cy) with half-size `s` px."""
    xs, ys = _grid()
    return _shape(noun, (xs - cx) / s, (ys - cy) / s)


def _inner_edge(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1)
    interior = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~interior


def render(noun: str, style: str, rng: np.random.Generator | None = None, jitter: Jitter | None = Jitter()) -> UInt8[np.ndarray, "32 32 3"]:
    """One image of `noun` in `style` (a culture code or "neutral"); `jitter=None` is canonical."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    rng = rng if rng is not None else np.random.default_rng(0)
    cx = cy = SIZE / 2
    s = 11.75
    c_off = np.zeros(3)
    if jitter is not None:
        cx += rng.uniform(-jitter.shift, jitter.shift)
        cy += rng.uniform(-jitter.shift, jitter.shift)
        s = rng.uniform(*jitter.scale)
        c_off = rng.integers(-jitter.colour, jitter.colour + 1, size=3)
    xs, ys = _grid()
    mask = _shape(noun, (xs - cx) / s, (ys - cy) / s)
    img = np.empty((SIZE, SIZE, 3), dtype=np.float64)
    img[:] = BACKGROUND
    if style == NEUTRAL:
        img[mask] = np.asarray(GREY) + c_off
    else:
        c1, c2 = (np.asarray(c, dtype=np.float64) + c_off for c in PALETTES[style])
        second = _pattern(PATTERNS[style], xs - cx, ys - cy, s)
        img[mask & ~second] = c1
        img[mask & second] = c2
    img[_inner_edge(mask)] = OUTLINE
    return np.clip(img, 0, 255).astype(np.uint8)


def render_batch(
    nouns: list[str], styles: list[str], rng: np.random.Generator, jitter: Jitter | None = Jitter()
) -> Float[np.ndarray, "n 3 32 32"]:
    """Images for paired lists of nouns and styles, scaled to [-1, 1], channels first."""
    if len(nouns) != len(styles):
        raise ValueError(f"render_batch: {len(nouns)} nouns but {len(styles)} styles")
    out = np.stack([render(n, s, rng, jitter) for n, s in zip(nouns, styles)]).astype(np.float32)
    return out.transpose(0, 3, 1, 2) / 127.5 - 1.0


def grid_figure(path: str, seed: int = 0) -> None:
    """Save a nouns × styles grid of renders (one jittered sample each) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(NOUNS), len(STYLES), figsize=(len(STYLES) * 0.8, len(NOUNS) * 0.85))
    for i, noun in enumerate(NOUNS):
        for j, style in enumerate(STYLES):
            ax = axes[i, j]
            ax.imshow(render(noun, style, rng), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(style, fontsize=8)
            if j == 0:
                ax.set_ylabel(noun, fontsize=8)
    fig.suptitle("CultureWorld renders: noun = silhouette, culture = palette + pattern", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

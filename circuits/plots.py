"""Figures of the culture analyses (matplotlib, Agg backend, written atomically).

Every function returns its figure; with a `path` it is also written there (the format from
the suffix) and closed, so a report writes files and a notebook shows the returned figure."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from circuits.results import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure


def pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend (imported on first use: importing pyplot
    is slow and picks a backend, so no module does it at import time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Figure, path: str | Path | None) -> Figure:
    """Write `fig` to `path` atomically and close it (nothing when `path` is None); returns `fig`."""
    if path is None:
        return fig
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return fig


def plot_layer_scan(scan: Any, path: str | Path | None = None) -> Figure:
    """Delta-CA by layer with its CI band, one panel per encoder, chosen layer marked."""
    plt = pyplot()
    encs = list(scan.encoders.values())
    fig, axes = plt.subplots(1, len(encs), figsize=(5 * len(encs), 3.4), squeeze=False)
    for ax, e in zip(axes[0], encs):
        ax.plot(e.layers, e.delta, "o-", color="C0", label="ΔCA")
        ax.fill_between(e.layers, e.ci_low, e.ci_high, color="C0", alpha=0.25, label=f"{int(scan.ci * 100)}% CI")
        ax.axhline(0, color="grey", lw=0.8)
        for l in e.sensitive:
            ax.axvline(l, color="C2", ls=":", lw=1)
        ax.axvline(e.chosen, color="C3", ls="--", label=f"chosen layer {e.chosen}")
        ax.set_xlabel(f"{e.encoder} layer")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_ylabel("ΔCA")
        ax.set_title(f"{e.encoder} ({e.direction}, n={e.n_pairs})")
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def _draw_wfs_curves(fig: Figure | SubFigure, curves: dict[str, Sequence[float]], ks: dict[str, int],
                     top: int) -> None:
    n = len(curves)
    cols = min(5, max(1, n))
    rows = (n + cols - 1) // cols
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (c, s) in zip(axes.flat, curves.items()):
        s = list(s)[:top]
        ax.plot(range(1, len(s) + 1), s, color="C0")
        ax.axvline(ks[c], color="C3", ls="--")
        ax.set_title(f"{c}: K={ks[c]}", fontsize=9)
        ax.set_xlabel("rank", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("sorted WFS (culture side), elbow K", y=1.04)


def _wfs_size(n: int) -> tuple[float, float]:
    cols = min(5, max(1, n))
    return 3 * cols, 2.4 * ((n + cols - 1) // cols)


def plot_wfs_curves(curves: dict[str, Sequence[float]], ks: dict[str, int], path: str | Path | None = None,
                    top: int = 200) -> Figure:
    """Sorted WFS_cult per culture (first `top` ranks) with the elbow K marked."""
    fig = pyplot().figure(figsize=_wfs_size(len(curves)))
    _draw_wfs_curves(fig, curves, ks, top)
    return save_figure(fig, path)


def _draw_overlap(fig: Figure | SubFigure, names: Sequence[str], matrix: Sequence[Sequence[float]], title: str) -> None:
    ax = fig.subplots()
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    fig.colorbar(im, ax=ax)
    ax.set_title(title)


def _overlap_size(n: int) -> tuple[float, float]:
    return 0.45 * n + 2, 0.45 * n + 1.5


def plot_overlap(names: Sequence[str], matrix: Sequence[Sequence[float]], path: str | Path | None = None,
                 title: str = "unit overlap (Jaccard)") -> Figure:
    """Culture x culture overlap of the unit sets (Jaccard, 0..1)."""
    fig = pyplot().figure(figsize=_overlap_size(len(names)))
    _draw_overlap(fig, names, matrix, title)
    return save_figure(fig, path)


def plot_units(curves: dict[str, Sequence[float]], ks: dict[str, int], names: Sequence[str],
               matrix: Sequence[Sequence[float]], path: str | Path | None = None, top: int = 200) -> Figure:
    """`plot_wfs_curves` and `plot_overlap` side by side in one figure."""
    (w1, h1), (w2, h2) = _wfs_size(len(curves)), _overlap_size(len(names))
    fig = pyplot().figure(figsize=(w1 + w2, max(h1, h2)))
    left, right = fig.subfigures(1, 2, width_ratios=[w1, w2])
    _draw_wfs_curves(left, curves, ks, top)
    _draw_overlap(right, names, matrix, "unit overlap (Jaccard)")
    return save_figure(fig, path)


def plot_bars(labels: Sequence[str], values: Sequence[float], lows: Sequence[float], highs: Sequence[float],
              path: str | Path | None = None, ylabel: str = "CultureVQA", title: str = "",
              scatter: dict[int, Sequence[float]] | None = None) -> Figure:
    """Bars with CI whiskers; `scatter` adds individual points (e.g. random draws) over bar i."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.3 * len(labels) + 2, 3.2))
    x = range(len(labels))
    err = [[v - l for v, l in zip(values, lows)], [h - v for v, h in zip(values, highs)]]
    ax.bar(x, values, yerr=err, capsize=4, color=[f"C{i}" for i in x])
    for i, pts in (scatter or {}).items():
        ax.scatter([i] * len(pts), pts, color="k", s=8, zorder=3)
    ax.set_xticks(list(x), labels, rotation=20)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return save_figure(fig, path)


def plot_lines(xs: Sequence[float], series: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
               path: str | Path | None, xlabel: str, ylabel: str, title: str = "", mark: float | None = None) -> Figure:
    """Several (mean, low, high) curves over the same x."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for i, (name, (m, lo, hi)) in enumerate(series.items()):
        ax.plot(xs, m, "o-", color=f"C{i}", label=name)
        ax.fill_between(xs, lo, hi, color=f"C{i}", alpha=0.2)
    if mark is not None:
        ax.axvline(mark, color="C3", ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_matrix(names: Sequence[str], matrix: Sequence[Sequence[float]], path: str | Path | None = None,
                title: str = "", xlabel: str = "", ylabel: str = "", fmt: str = "{:.0f}") -> Figure:
    """A culture x culture heat map (diverging around 0) with each cell's value written in it."""
    plt = pyplot()
    m = np.asarray(matrix, dtype=float)
    lim = max(float(np.abs(m).max()), 1e-9)
    fig, ax = plt.subplots(figsize=(0.5 * len(names) + 2.5, 0.5 * len(names) + 1.8))
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=6,
                    color="white" if abs(m[i, j]) > 0.6 * lim else "black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_causal_sweep(sweep: Any, path: str | Path | None = None) -> Figure:
    """CultureVQA drop per layer when its top units are masked; the ΔCA-chosen layer in red."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 0.4 * len(sweep.layers) + 2), 3.2))
    colors = ["C3" if l == sweep.chosen else "C0" for l in sweep.layers]
    ax.bar(sweep.layers, sweep.drops, color=colors)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("layer (red: ΔCA-chosen)")
    ax.set_ylabel("CultureVQA drop when masked")
    ax.set_title(f"causal sweep: top {sweep.n_units} {sweep.basis_kind} units per culture masked")
    return save_figure(fig, path)

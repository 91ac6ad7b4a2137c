"""Figures of the culture analyses (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

from circuits.results import atomic_write_bytes


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pyplot():
    """matplotlib.pyplot on the headless Agg backend, for figures outside this module."""
    return _plt()


def _save(fig, path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_layer_scan(scan: Any, path) -> None:
    """Delta-CA by layer with its CI band, one panel per encoder, chosen layer marked."""
    plt = _plt()
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
    _save(fig, path)


def plot_wfs_curves(curves: dict[str, Sequence[float]], ks: dict[str, int], path, top: int = 200) -> None:
    """Sorted WFS_cult per culture (first `top` ranks) with the elbow K marked."""
    plt = _plt()
    n = len(curves)
    cols = min(5, max(1, n))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False)
    for ax, (c, s) in zip(axes.flat, curves.items()):
        s = list(s)[:top]
        ax.plot(range(1, len(s) + 1), s, color="C0")
        ax.axvline(ks[c], color="C3", ls="--")
        ax.set_title(f"{c}: K={ks[c]}", fontsize=9)
        ax.set_xlabel("rank", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("sorted WFS (culture side), elbow K", y=1.04)
    _save(fig, path)


def plot_overlap(names: Sequence[str], matrix: Sequence[Sequence[float]], path, title: str = "unit overlap (Jaccard)") -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(0.45 * len(names) + 2, 0.45 * len(names) + 1.5))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    _save(fig, path)


def plot_bars(labels: Sequence[str], values: Sequence[float], lows: Sequence[float], highs: Sequence[float], path,
              ylabel: str = "CultureVQA", title: str = "", scatter: dict[int, Sequence[float]] | None = None) -> None:
    """Bars with CI whiskers; `scatter` adds individual points (e.g. random draws) over bar i."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.3 * len(labels) + 2, 3.2))
    x = range(len(labels))
    err = [[v - l for v, l in zip(values, lows)], [h - v for v, h in zip(values, highs)]]
    ax.bar(x, values, yerr=err, capsize=4, color=[f"C{i}" for i in x])
    for i, pts in (scatter or {}).items():
        ax.scatter([i] * len(pts), pts, color="k", s=8, zorder=3)
    ax.set_xticks(list(x), labels, rotation=20)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _save(fig, path)


def plot_lines(xs: Sequence[float], series: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float]]], path,
               xlabel: str, ylabel: str, title: str = "", mark: float | None = None) -> None:
    """Several (mean, low, high) curves over the same x."""
    plt = _plt()
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
    _save(fig, path)


def plot_matrix(names: Sequence[str], matrix: Sequence[Sequence[float]], path, title: str = "",
                xlabel: str = "", ylabel: str = "", fmt: str = "{:.0f}") -> None:
    """A culture x culture heat map (diverging around 0) with each cell's value written in it."""
    import numpy as np

    plt = _plt()
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
    _save(fig, path)

"""Training curves as a PNG (Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def plot_metrics(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Loss, FVU, L0 and dead fraction against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = [r["tokens"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    for ax, key, label in zip(axes, ("loss", "fvu", "l0", "dead"),
                              ("loss (FVU + α·AuxK)", "FVU (pooled)", "L0", "dead fraction")):
        ax.plot(tokens, [r[key] for r in rows])
        ax.set_xlabel("tokens")
        ax.set_title(label)
        if key in ("loss", "fvu") and all(r[key] > 0 for r in rows):
            ax.set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

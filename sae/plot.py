"""Training curves as a PNG (Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sae.errors import SAEError

# key in the logged rows -> panel title
PANELS = {"loss": "loss (FVU + α·AuxK)", "fvu": "FVU (pooled)", "aux": "AuxK loss",
          "l0": "L0", "dead": "dead fraction"}


def plot_metrics(rows: Sequence[dict], path: str | Path, title: str = "",
                 keys: Sequence[str] = tuple(PANELS), dead_tokens: int | None = None) -> Path:
    """One panel per logged key against tokens seen (default: loss, FVU, AuxK loss, L0, dead
    fraction). `dead_tokens` (e.g. `sae.cfg.dead_tokens`) draws the threshold as a dashed line:
    before it no latent can count as dead, so the AuxK loss is 0 there by construction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    missing = [k for k in keys if k not in PANELS or (rows and k not in rows[0])]
    if missing:
        raise SAEError(f"plot_metrics: keys {missing} not in the logged rows / {sorted(PANELS)}")
    tokens = [r["tokens"] for r in rows]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        ax.plot(tokens, [r[key] for r in rows])
        ax.set_xlabel("tokens")
        ax.set_title(PANELS[key])
        if dead_tokens is not None and key in ("aux", "dead"):
            ax.axvline(dead_tokens, ls="--", c="grey", lw=1)
        if key in ("loss", "fvu") and all(r[key] > 0 for r in rows):
            ax.set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_auxk(rows: Sequence[dict], path: str | Path, dead_tokens: int | None = None,
              title: str = "") -> Path:
    """AuxK loss and dead fraction through training (`plot_metrics` with those two panels)."""
    return plot_metrics(rows, path, title, keys=("aux", "dead"), dead_tokens=dead_tokens)

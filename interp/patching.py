"""Activation patching on the text encoders: clean activations written into the corrupted run.

Each patched run is one nnsight trace of the encoder (write at one site, read the encoder
output), so it is the same code path as `interp.capture`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .capture import capture, trace_encoder
from .errors import CultureLensError, SiteError
from .interventions import Replace
from .sites import parse

Metric = Callable[[Tensor], Any]


@dataclass
class PatchResult:
    """Tidy table: one row per (site, position) with the metric value and the normalised effect
    (value - corrupt) / (clean - corrupt): 1 = fully restores the clean run, 0 = no effect."""

    rows: list[dict[str, Any]]
    clean_value: float
    corrupt_value: float

    def to_markdown(self) -> str:
        lines = ["| site | position | value | effect |", "|---|---|---|---|"]
        for r in self.rows:
            pos = "all" if r["position"] is None else r["position"]
            lines.append(f"| {r['site']} | {pos} | {r['value']:.4g} | {r['effect']:.3f} |")
        return "\n".join(lines)

    def matrix(self) -> tuple[list[str], list[Any], Tensor]:
        """(sites, positions, effect [n_sites, n_positions]) for plotting."""
        sites = list(dict.fromkeys(r["site"] for r in self.rows))
        positions = list(dict.fromkeys(r["position"] for r in self.rows))
        m = torch.full((len(sites), len(positions)), float("nan"))
        for r in self.rows:
            m[sites.index(r["site"]), positions.index(r["position"])] = r["effect"]
        return sites, positions, m

    def plot(self, path: str | None = None, title: str = "activation patching") -> Any:
        """Heat map of the normalised effect (sites × positions); saved to `path` if given."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        sites, positions, m = self.matrix()
        fig, ax = plt.subplots(figsize=(4.0 + 0.5 * len(positions), 1.5 + 0.35 * len(sites)), layout="constrained")
        im = ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        ax.set_yticks(range(len(sites)), sites, fontsize=7)
        ax.set_xticks(range(len(positions)), ["all" if p is None else p for p in positions], fontsize=7)
        ax.set_xlabel("token position")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, label="effect")
        if path is not None:
            fig.savefig(path, dpi=120)
            plt.close(fig)
        return fig


def _scalar(value: Any) -> float:
    return float(torch.as_tensor(value, dtype=torch.float64).mean())


def patch(model: Any, clean: str | Sequence[str], corrupt: str | Sequence[str], sites: Sequence[str],
          metric: Metric, positions: Sequence[int] | None = None) -> PatchResult:
    """For each site (and each token position if given), run `corrupt` with that site's activation
    taken from the `clean` run and score what the UNet would receive with `metric(out [B, S, d])`."""
    clean = [clean] if isinstance(clean, str) else list(clean)
    corrupt = [corrupt] if isinstance(corrupt, str) else list(corrupt)
    if len(clean) != len(corrupt):
        raise CultureLensError(f"patch: {len(clean)} clean prompts but {len(corrupt)} corrupt prompts")
    parsed = [parse(model, s) for s in sites]
    for s in parsed:
        if s.encoder == "unet" or not s.writable:
            raise SiteError(f"patch: {s.name!r} cannot be patched (text residual, attn_out and mlp sites can)")
    clean_acts = capture(model, clean, [s.name for s in parsed])
    outputs: dict[str, tuple[float, float]] = {}
    rows: list[dict[str, Any]] = []
    for s in parsed:
        if s.encoder not in outputs:
            cb = model.tokenize(clean, s.encoder)
            _, c_out = trace_encoder(model, s.encoder, cb, [], {}, want_output=True)
            _, x_out = trace_encoder(model, s.encoder, model.tokenize(corrupt, s.encoder), [], {}, want_output=True)
            outputs[s.encoder] = (_scalar(metric(c_out)), _scalar(metric(x_out)))
        c_val, x_val = outputs[s.encoder]
        batch = model.tokenize(corrupt, s.encoder)
        if positions is not None:
            n = batch["input_ids"].shape[1]
            bad = [p for p in positions if not -n <= p < n]
            if bad:
                raise SiteError(f"patch: positions {bad} out of range for sequence length {n}")
        for pos in ([None] if positions is None else list(positions)):
            iv = Replace(s.name, clean_acts[s.name], positions=None if pos is None else [pos])
            _, out = trace_encoder(model, s.encoder, batch, [], {s.name: [iv]}, want_output=True)
            value = _scalar(metric(out))
            denom = c_val - x_val
            effect = (value - x_val) / denom if denom != 0 else math.nan
            rows.append({"site": s.name, "layer": s.layer, "kind": s.kind, "position": pos,
                         "value": value, "effect": effect})
    first = outputs[parsed[0].encoder] if parsed else (math.nan, math.nan)
    return PatchResult(rows=rows, clean_value=first[0], corrupt_value=first[1])

"""Random-unit controls that can fail: uniform (the paper's), activity-matched, next-ranked.

Why three. The paper masks "the same number of neurons at random". On SAE latents only k of
d_sae fire on a token, so a uniform draw is almost always silent and "random units change
nothing" says little (PAPER.md decision 10). An activity-matched draw takes, for each detected
unit, a unit whose firing frequency and mean magnitude on reference activations (e.g. the probe
prompts) fall in the same quantile bins; a next-ranked draw takes the units that come right
after the detected ones by the same score. Both perturb the site about as much as the detected
units do, so a control that leaves the culture intact is evidence rather than a no-op.

`interp.random_units(units, seed, match=...)` is the entry point; this module holds the logic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import CultureLensError

MATCHES = (None, "activity", "ranked")


def activity_profile(reference: Float[Tensor, "n d"], eps: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: firing frequency (share of rows with |act| > eps) and mean magnitude (mean |act|
    over the rows where it fires; 0 for a unit that never fires)."""
    r = torch.as_tensor(reference).detach().to(torch.float64).reshape(-1, torch.as_tensor(reference).shape[-1])
    if r.shape[0] == 0:
        raise CultureLensError("activity_profile: the reference activations have no rows")
    mag = r.abs()
    fires = mag > eps
    n_fire = fires.sum(0)
    freq = (n_fire.double() / r.shape[0]).numpy()
    mean_mag = torch.where(n_fire > 0, (mag * fires).sum(0) / n_fire.clamp_min(1), torch.zeros_like(n_fire.double()))
    return freq, mean_mag.numpy()


def quantile_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each value: 0 for units that never fire (value 0), else 1..n_bins by the quantiles
    of the non-zero values, so silent units never share a bin with active ones."""
    if n_bins < 1:
        raise CultureLensError(f"quantile_bins: n_bins must be >= 1; got {n_bins}")
    out = np.zeros(len(values), dtype=np.int64)
    pos = values > 0
    if pos.any():
        edges = np.unique(np.quantile(values[pos], np.linspace(0, 1, n_bins + 1)[1:-1]))
        out[pos] = 1 + np.searchsorted(edges, values[pos], side="right")
    return out


def activity_matched(indices: Tensor, reference: Float[Tensor, "n d"], seed: int, n_bins: int = 5,
                     eps: float = 0.0, disjoint: bool = True) -> tuple[Tensor, dict[str, Any]]:
    """For each unit in `indices` (processed in a seeded order), one unit drawn uniformly from the
    unused units in the same (frequency bin, magnitude bin) cell; when that cell is used up, the
    nearest non-empty cell (Chebyshev distance in bin coordinates, then the seeded order) is used.
    Returns the chosen units and how many had to leave their cell (`widened`)."""
    d = int(torch.as_tensor(reference).shape[-1])
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= d):
        raise CultureLensError(f"activity-matched control: unit index out of range 0..{d - 1} of the reference "
                               f"activations (they have {d} columns): {idx.tolist()}")
    freq, mag = activity_profile(reference, eps)
    fb, mb = quantile_bins(freq, n_bins), quantile_bins(mag, n_bins)
    free = np.ones(d, dtype=bool)
    if disjoint:
        free[idx.numpy()] = False
    if free.sum() < idx.numel():
        raise CultureLensError(f"activity-matched control: need {idx.numel()} units but only {int(free.sum())} are free")
    rng = np.random.default_rng(int(seed))
    order = rng.permutation(idx.numel())
    noise = rng.random(d)  # seeded tie-break among cells at the same distance
    chosen, widened = [], 0
    for j in order:
        u = int(idx[j])
        dist = np.maximum(np.abs(fb - fb[u]), np.abs(mb - mb[u])).astype(np.float64)
        dist[~free] = np.inf
        best = dist.min()
        cand = np.flatnonzero(dist == best)
        widened += int(best > 0)
        pick = int(cand[rng.integers(len(cand))]) if best == 0 else int(cand[np.argmin(noise[cand])])
        chosen.append(pick)
        free[pick] = False
    return torch.tensor(sorted(chosen), dtype=torch.long), {"widened": widened, "n_bins": n_bins}


def next_ranked(indices: Tensor, scores: Float[Tensor, " d"], seed: int = 0) -> Tensor:
    """The len(indices) units that follow, by descending `scores` (ties broken by unit index),
    once the units in `indices` are removed. Seed r takes the r-th such block (r = 0: the units
    right after the detected ones), so several draws are several disjoint next-ranked sets."""
    s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if seed < 0:
        raise CultureLensError(f"ranked control: seed must be >= 0 (it picks the block of next-ranked units); got {seed}")
    keep = torch.ones(s.numel(), dtype=torch.bool)
    keep[idx] = False
    # stable sort on -score over unit order: ties go to the lower index
    ranked = torch.arange(s.numel())[keep][torch.sort(-s[keep], stable=True).indices]
    n = idx.numel()
    lo = int(seed) * n
    if lo + n > ranked.numel():
        raise CultureLensError(f"ranked control: block {seed} needs units {lo}..{lo + n - 1} after the detected ones, "
                               f"but only {ranked.numel()} other units have scores")
    return ranked[lo:lo + n].sort().values

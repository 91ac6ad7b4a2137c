"""Weighted frequency score (PAPER.md Eq. 4-6), the elbow rule (decision 6) and the
noun-side filter (decision 7). Pure tensor code: no model, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.errors import CultureLensError


def _check_z(z: Tensor, name: str = "z") -> Tensor:
    if not isinstance(z, Tensor):
        z = torch.as_tensor(z)
    if z.ndim != 2:
        raise CultureLensError(f"{name} must be [N, M] (rows = samples, columns = units); got shape {tuple(z.shape)}")
    if z.shape[0] == 0:
        raise CultureLensError(f"{name} has no rows (N = 0): WFS needs at least one sample")
    if not torch.isfinite(z).all():
        bad = (~torch.isfinite(z)).nonzero()[0].tolist()
        raise CultureLensError(f"{name} has a non-finite value at row {bad[0]}, unit {bad[1]}")
    return z


def firing(z: Float[Tensor, "N M"], eps: float = 0.0) -> Bool[Tensor, "N M"]:
    """1[Z > eps]: which samples fire each unit."""
    return _check_z(z) > eps


def frequency(z: Float[Tensor, "N M"], eps: float = 0.0) -> Float[Tensor, " M"]:
    """Eq. 4: f(m) = (1/N) sum_i 1[Z[i,m] > eps]."""
    return firing(z, eps).to(torch.float64).mean(0)


def magnitude(z: Float[Tensor, "N M"], eps: float = 0.0, beta: float = 1e-6) -> Float[Tensor, " M"]:
    """Eq. 5: mean firing magnitude; beta keeps the denominator of a never-firing unit non-zero."""
    if beta < 0:
        raise CultureLensError(f"beta must be >= 0; got {beta}")
    fire = firing(z, eps)
    num = (z.to(torch.float64) * fire).sum(0)
    den = fire.to(torch.float64).sum(0) + beta
    if beta == 0:
        # A unit that never fires has 0/0; its magnitude is 0 by definition (nothing fired).
        return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))
    return num / den


def wfs(z: Float[Tensor, "N M"], eps: float = 0.0, beta: float = 1e-6) -> Float[Tensor, " M"]:
    """Eq. 6: WFS(m) = f(m) * mu(m), computed in float64, returned in float64.

    ``z`` holds one row per sample (prompt) and one column per unit (SAE latent or neuron)."""
    z = _check_z(torch.as_tensor(z) if not isinstance(z, Tensor) else z)
    return frequency(z, eps) * magnitude(z, eps, beta)


K_SOURCES = ("elbow", "cap", "flat", "floor", "given", "none")
MIN_DROP = 2.0      # a "sharp" drop: the score at least halves from one rank to the next
NOISE_FLOOR = 0.01  # scores under this share of the top one are the curve's noisy bottom


@dataclass(frozen=True)
class Elbow:
    """Where K came from (decision 6). `source` is one of `K_SOURCES`:
    "elbow" (the sharp drop decided), "cap" (the sharp drop lies beyond k_max: K = k_max),
    "flat" (no drop of at least `min_drop` among the ranks looked at: no elbow, K = k_max, or
    every positive unit when fewer), "floor" (the drop came before k_min: K = k_min),
    "given" (K fixed by the caller), "none" (no unit has a positive score: K = 0)."""

    k: int
    source: str
    raw: int | None          # the rank before the sharpest drop (None: no drop computed)
    drop: float | None       # that drop, as the ratio of consecutive scores
    n_positive: int          # length of the positive part of the curve

    def to_json(self) -> dict:
        return {"k": self.k, "source": self.source, "raw": self.raw, "drop": self.drop, "n_positive": self.n_positive}


def elbow_k(
    sorted_scores: Float[Tensor, " M"], k_min: int = 1, k_max: int | None = 64, min_drop: float = MIN_DROP,
    floor: float = NOISE_FLOOR,
) -> Elbow:
    """Decision 6: K at the elbow of the positive, decaying part of a descending score curve.

    The rule: keep the positive scores (exact zeros -- units that never fire on the culture's
    prompts, most of an SAE -- say nothing about where the curve bends); among its first
    2*k_max + 1 ranks, find the sharpest relative drop, the largest ratio s[i-1] / s[i], with
    scores under `floor` x the top score raised to that floor (the last few positive scores are
    tiny and their ratios are noise, not the elbow); K = i, the units before it. A drop under
    `min_drop` (2: the score halves) is no elbow: the curve decays smoothly, and K is the cap
    (source "flat"). A drop past k_max gives K = k_max ("cap"), one before k_min gives k_min
    ("floor").

    Why a ratio and not the chord (the point farthest from the line between the first and last
    point): with a few peaks above a long positive tail, the chord finds the tail's own bend, not
    the drop after the peaks (tests/circuits/locate/test_wfs.py shows both); the ratio is scale-free and
    reads only the top of the curve."""
    s = torch.as_tensor(sorted_scores, dtype=torch.float64).flatten()
    n = s.numel()
    if n == 0:
        raise CultureLensError("elbow: empty score curve")
    if not torch.isfinite(s).all():
        raise CultureLensError(f"elbow: non-finite score at rank {int((~torch.isfinite(s)).nonzero()[0])}")
    up = s[1:] > s[:-1] + 1e-12 * s.abs().max().clamp_min(1)
    if up.any():
        bad = int(up.nonzero()[0]) + 1
        raise CultureLensError(f"elbow: scores must be sorted in descending order (rank {bad} exceeds rank {bad - 1})")
    if not 0 <= floor < 1:
        raise CultureLensError(f"elbow: floor must be in [0, 1); got {floor}")
    if min_drop <= 1:
        raise CultureLensError(f"elbow: min_drop must be > 1 (a ratio of consecutive scores); got {min_drop}")
    k_max = n if k_max is None else min(k_max, n)
    if not 1 <= k_min <= k_max:
        raise CultureLensError(f"elbow: need 1 <= k_min <= k_max <= {n}; got k_min={k_min}, k_max={k_max}")
    n_pos = int((s > 0).sum())
    if n_pos == 0:
        return Elbow(0, "none", None, None, 0)
    p = s[: min(n_pos, 2 * k_max + 1)].clamp_min(floor * float(s[0]))
    if p.numel() < 2:
        return Elbow(min(max(k_min, n_pos), k_max), "flat", None, None, n_pos)
    ratio = p[:-1] / p[1:]
    i = int(torch.argmax(ratio).item())            # first of equal maxima: the earliest drop
    raw, drop = i + 1, float(ratio[i])
    if drop < min_drop:
        return Elbow(min(max(k_min, n_pos), k_max), "flat", raw, drop, n_pos)
    if raw > k_max:
        return Elbow(k_max, "cap", raw, drop, n_pos)
    if raw < k_min:
        return Elbow(k_min, "floor", raw, drop, n_pos)
    return Elbow(raw, "elbow", raw, drop, n_pos)


def elbow(
    sorted_scores: Float[Tensor, " M"], k_min: int = 1, k_max: int | None = 64, min_drop: float = MIN_DROP
) -> int:
    """K only (see `elbow_k` for the rule and where K came from)."""
    return elbow_k(sorted_scores, k_min, k_max, min_drop).k


def noun_filter(
    wfs_cult: Float[Tensor, " M"], wfs_noun: Float[Tensor, " M"], rho: float = 0.5
) -> Bool[Tensor, " M"]:
    """Decision 7: keep unit m unless WFS_noun(m) >= rho * WFS_cult(m)."""
    a, b = torch.as_tensor(wfs_cult), torch.as_tensor(wfs_noun)
    if a.shape != b.shape:
        raise CultureLensError(f"noun_filter: WFS_cult has shape {tuple(a.shape)} but WFS_noun {tuple(b.shape)}")
    if rho < 0:
        raise CultureLensError(f"noun_filter: rho must be >= 0; got {rho}")
    return b < rho * a


def specificity(wfs_by_culture: Float[Tensor, "C M"]) -> Float[Tensor, "C M"]:
    """Culture-specific score (an option beside plain WFS): for culture A and unit m,
    WFS_A(m) - max over the other cultures B of WFS_B(m). Positive only where A's prompts drive
    the unit harder than any other culture's; a unit shared by many cultures scores <= 0."""
    w = torch.as_tensor(wfs_by_culture, dtype=torch.float64)
    if w.ndim != 2 or w.shape[0] < 2:
        raise CultureLensError(f"specificity: need [cultures >= 2, units] WFS; got shape {tuple(w.shape)}")
    top2 = torch.topk(w, 2, dim=0).values                      # best and second-best culture per unit
    best_other = torch.where(w >= top2[0], top2[1], top2[0])   # for the best culture, the runner-up
    return w - best_other


@dataclass
class Selection:
    """The result of ranking one culture's units: top-K by the ranking score (WFS_cult unless a
    culture-specific score is given), then the noun filter."""

    order: Int[Tensor, " M"]          # all units, by descending ranking score
    k: int                            # K on the sorted curve (elbow unless given)
    kept: Int[Tensor, " K2"]          # unit indices kept after the noun filter, by ranking score
    dropped: Int[Tensor, " D"]        # top-K units the noun filter dropped
    wfs_cult: Float[Tensor, " M"]
    wfs_noun: Float[Tensor, " M"]
    k_source: str = "elbow"           # see `Elbow` / `K_SOURCES`
    elbow: Elbow | None = None
    rank_score: Float[Tensor, " M"] | None = None    # what was ranked (WFS_cult or the specific score)


def select_units(
    wfs_cult: Float[Tensor, " M"],
    wfs_noun: Float[Tensor, " M"],
    k: int | None = None,
    k_min: int = 1,
    k_max: int | None = 64,
    rho: float = 0.5,
    rank_score: Float[Tensor, " M"] | None = None,
    min_drop: float = MIN_DROP,
) -> Selection:
    """Rank by `rank_score` (default WFS_cult; ties by index, so the result is deterministic),
    keep the top K (`elbow_k` on the sorted ranking score unless given), then drop the noun-salient
    ones (decision 7, on WFS). Units whose ranking score is not positive never count."""
    wc = torch.as_tensor(wfs_cult, dtype=torch.float64)
    wn = torch.as_tensor(wfs_noun, dtype=torch.float64)
    r = wc if rank_score is None else torch.as_tensor(rank_score, dtype=torch.float64)
    if r.shape != wc.shape:
        raise CultureLensError(f"select_units: rank_score has shape {tuple(r.shape)} but WFS_cult {tuple(wc.shape)}")
    # Stable sort on the negated score keeps ties in index order.
    order = torch.sort(-r, stable=True).indices
    if k is None:
        el = elbow_k(r[order], k_min=k_min, k_max=k_max, min_drop=min_drop)
    elif not 1 <= k <= wc.numel():
        raise CultureLensError(f"select_units: k={k} outside [1, {wc.numel()}]")
    else:
        el = Elbow(k, "given", None, None, int((r > 0).sum()))
    top = order[: el.k]
    top = top[r[top] > 0]
    keep = noun_filter(wc[top], wn[top], rho)
    return Selection(order=order, k=el.k, kept=top[keep], dropped=top[~keep], wfs_cult=wc, wfs_noun=wn,
                     k_source=el.source, elbow=el, rank_score=r)

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


def elbow(
    sorted_scores: Float[Tensor, " M"], k_min: int = 1, k_max: int | None = None
) -> int:
    """Decision 6: the point of the descending curve farthest from the chord joining its first
    and last points (both axes scaled to [0, 1]). K counts the units before the sharp drop:
    a farthest point below the chord (the usual convex "L") is the first unit after the drop
    (K = its index); one above the chord (a plateau, then a drop) is the last unit before it
    (K = index + 1). Clipped to [k_min, k_max]; a flat curve has no elbow: K = k_min."""
    s = torch.as_tensor(sorted_scores, dtype=torch.float64).flatten()
    n = s.numel()
    if n == 0:
        raise CultureLensError("elbow: empty score curve")
    if (s[1:] > s[:-1] + 1e-12 * s.abs().max().clamp_min(1)).any():
        raise CultureLensError("elbow: scores must be sorted in descending order")
    k_max = n if k_max is None else min(k_max, n)
    if not 1 <= k_min <= k_max:
        raise CultureLensError(f"elbow: need 1 <= k_min <= k_max <= {n}; got k_min={k_min}, k_max={k_max}")
    span = s[0] - s[-1]
    if n < 3 or span <= 0:
        return k_min
    x = torch.arange(n, dtype=torch.float64) / (n - 1)
    y = (s - s[-1]) / span
    # Signed distance (times sqrt 2) to the chord x + y = 1: > 0 above it, < 0 below.
    d = x + y - 1.0
    i = int(torch.argmax(d.abs()).item())
    k = i + 1 if d[i] > 0 else i
    return max(k_min, min(k_max, k))


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


@dataclass
class Selection:
    """The result of ranking one culture's units: top-K by WFS_cult, then the noun filter."""

    order: Int[Tensor, " M"]          # all units, by descending WFS_cult
    k: int                            # elbow K on the sorted curve
    kept: Int[Tensor, " K2"]          # unit indices kept after the noun filter, by WFS_cult
    dropped: Int[Tensor, " D"]        # top-K units the noun filter dropped
    wfs_cult: Float[Tensor, " M"]
    wfs_noun: Float[Tensor, " M"]


def select_units(
    wfs_cult: Float[Tensor, " M"],
    wfs_noun: Float[Tensor, " M"],
    k: int | None = None,
    k_min: int = 1,
    k_max: int | None = 64,
    rho: float = 0.5,
) -> Selection:
    """Rank by WFS_cult (ties by index, so the result is deterministic), keep the top K (the
    elbow unless given), then drop the noun-salient ones. Units with WFS_cult = 0 never count."""
    wc = torch.as_tensor(wfs_cult, dtype=torch.float64)
    wn = torch.as_tensor(wfs_noun, dtype=torch.float64)
    # Stable sort on the negated score keeps ties in index order.
    order = torch.sort(-wc, stable=True).indices
    if k is None:
        k = elbow(wc[order], k_min=k_min, k_max=k_max)
    elif not 1 <= k <= wc.numel():
        raise CultureLensError(f"select_units: k={k} outside [1, {wc.numel()}]")
    top = order[:k]
    top = top[wc[top] > 0]
    keep = noun_filter(wc[top], wn[top], rho)
    return Selection(order=order, k=k, kept=top[keep], dropped=top[~keep], wfs_cult=wc, wfs_noun=wn)

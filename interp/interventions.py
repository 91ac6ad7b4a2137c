"""Interventions: sets of units and what to do to them (mask, amplify), plus seeded random controls.

An intervention is any object with a `site: str` and `apply(act) -> act`; optional attributes
`positions` (token positions it touches; others keep their value) and `steps` (denoising-step
indices for UNet sites; None = every step). `sae.Steer` and the circuits enhancer plug in so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import CultureLensError, SiteError


def unit_axis(site: str) -> int:
    """Attention patterns [B, H, Q, K] have heads as units (axis 1); everything else the last axis."""
    return 1 if site.endswith("hook_pattern") else -1


@dataclass
class Units:
    """A set of units (neurons, channels, heads or SAE latents) at one site.

    `dim` (the number of units at the site) is needed only to draw random controls; it is filled
    in when the Units are checked against a model.
    """

    site: str
    indices: Any
    scores: Any = None
    label: str | None = None
    dim: int | None = None

    def __post_init__(self) -> None:
        idx = torch.as_tensor(self.indices, dtype=torch.long).reshape(-1)
        if idx.numel() != torch.unique(idx).numel():
            raise CultureLensError(f"Units at {self.site!r}: duplicate indices in {idx.tolist()}")
        if self.dim is not None and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.dim):
            raise SiteError(f"Units at {self.site!r}: index out of range 0..{self.dim - 1}: {idx.tolist()}")
        self.indices = idx

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __repr__(self) -> str:
        lab = f", label={self.label!r}" if self.label else ""
        return f"Units({self.site!r}, n={len(self)}{lab})"


class Intervention:
    """Base class: subclasses set `site` and implement `apply(act) -> act` (must not modify act in place)."""

    site: str
    positions: Sequence[int] | None = None
    steps: Sequence[int] | None = None

    def apply(self, act: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _index(act: Tensor, site: str, idx: Tensor) -> tuple:
    return (slice(None), idx.to(act.device)) if unit_axis(site) == 1 else (..., idx.to(act.device))


@dataclass
class Mask(Intervention):
    """Zero- or mean-ablate `units`. `mean` (mode="mean") has one value per unit or per site unit."""

    units: Units
    mode: str = "zero"
    mean: Any = None
    positions: Sequence[int] | None = None
    steps: Sequence[int] | None = None
    site: str = field(init=False)

    def __post_init__(self) -> None:
        self.site = self.units.site
        if self.mode not in ("zero", "mean"):
            raise CultureLensError(f"Mask mode {self.mode!r}: use 'zero' or 'mean'")
        if self.mode == "mean" and self.mean is None:
            raise CultureLensError(
                f"Mask(mode='mean') at {self.site!r} needs mean= (e.g. interp.mean_activation(model, site, prompts))"
            )

    def apply(self, act: Float[Tensor, "..."]) -> Float[Tensor, "..."]:
        out = act.clone()
        ix = _index(act, self.site, self.units.indices)
        if self.mode == "zero":
            out[ix] = 0
            return out
        mean = torch.as_tensor(self.mean, dtype=act.dtype, device=act.device).reshape(-1)
        if mean.numel() != len(self.units):
            mean = mean[self.units.indices.to(act.device)]
        if unit_axis(self.site) == 1:
            mean = mean.view(1, -1, *([1] * (act.ndim - 2)))
        out[ix] = mean.expand_as(out[ix])
        return out


@dataclass
class Amplify(Intervention):
    """Scale `units` by (1 + lam); lam = 0 is exactly the identity."""

    units: Units
    lam: float
    positions: Sequence[int] | None = None
    steps: Sequence[int] | None = None
    site: str = field(init=False)

    def __post_init__(self) -> None:
        self.site = self.units.site

    def apply(self, act: Float[Tensor, "..."]) -> Float[Tensor, "..."]:
        out = act.clone()
        ix = _index(act, self.site, self.units.indices)
        out[ix] = out[ix] * (1.0 + self.lam)
        return out


@dataclass
class Replace(Intervention):
    """Set the site's activation to `value` (broadcast); used by activation patching."""

    site: str
    value: Tensor
    positions: Sequence[int] | None = None
    steps: Sequence[int] | None = None

    def apply(self, act: Tensor) -> Tensor:
        return self.value.to(act.device, act.dtype).expand_as(act).clone()


class OnRows(Intervention):
    """`intervention` applied to some prompts of a batch only (`rows`: one bool per prompt; the
    others keep their activation), so prompts that need different interventions (each culture
    its own units) share one batched generation.

    An activation with k times as many rows as prompts (the UNet under classifier-free guidance:
    [uncond; cond]) repeats the pattern k times. That layout does not hold for UNet sites with
    `num_images_per_prompt` > 1, so use one image per prompt there.
    """

    def __init__(self, intervention: Any, rows: Sequence[bool]) -> None:
        self.intervention = intervention
        self.rows = torch.as_tensor(rows, dtype=torch.bool).reshape(-1)
        if not self.rows.numel():
            raise CultureLensError(f"OnRows({intervention!r}): no rows given")

    # The wrapped intervention's site, positions, steps and units are this one's (checked and
    # honoured by the hook engine as usual).
    site = property(lambda self: self.intervention.site)
    positions = property(lambda self: getattr(self.intervention, "positions", None))
    steps = property(lambda self: getattr(self.intervention, "steps", None))
    units = property(lambda self: getattr(self.intervention, "units", None))

    @classmethod
    def grouped(cls, owners: Sequence[Any], interventions: Mapping[Any, Sequence[Any]]) -> list["OnRows"]:
        """One batch whose rows belong to owners (row i to `owners[i]`, e.g. its culture): each
        owner's `interventions[owner]` on its own rows only; owners without an entry get none."""
        return [cls(iv, [o == key for o in owners]) for key in dict.fromkeys(owners) for iv in interventions.get(key, ())]

    def apply(self, act: Tensor) -> Tensor:
        n = self.rows.numel()
        if act.shape[0] % n:
            raise CultureLensError(f"OnRows at {self.site!r}: activation has {act.shape[0]} rows, not a multiple "
                                   f"of the {n} prompts the row mask names")
        keep = self.rows.to(act.device).repeat(act.shape[0] // n).view(-1, *([1] * (act.ndim - 1)))
        return torch.where(keep, self.intervention.apply(act), act)

    def __repr__(self) -> str:
        return f"OnRows({self.intervention!r}, rows={self.rows.nonzero().flatten().tolist()})"


def random_units(units: Units, seed: int = 0, disjoint: bool = True, dim: int | None = None,
                 model: Any = None) -> Units:
    """Same count, same site, drawn with `seed` (disjoint from `units` unless disjoint=False).

    The pool size comes from `dim`, else `units.dim`, else the site on `model`.
    """
    if dim is None:
        dim = units.dim
    if dim is None and model is not None:
        from .sites import parse

        dim = parse(model, units.site).dim
    if dim is None:
        raise CultureLensError(f"random_units({units!r}): unknown pool size; pass dim= or model=")
    pool = torch.arange(dim)
    if disjoint:
        keep = torch.ones(dim, dtype=torch.bool)
        keep[units.indices] = False
        pool = pool[keep]
    if pool.numel() < len(units):
        raise CultureLensError(
            f"random_units at {units.site!r}: need {len(units)} units but only {pool.numel()} are available"
        )
    g = torch.Generator().manual_seed(int(seed))
    chosen = pool[torch.randperm(pool.numel(), generator=g)[: len(units)]].sort().values
    return Units(units.site, chosen, label=f"random(seed={seed})", dim=dim)


def apply_all(ivs: Sequence[Any], act: Tensor, step: int | None = None) -> Tensor:
    """Apply interventions in order, honouring `positions` and `steps`."""
    for iv in ivs:
        steps = getattr(iv, "steps", None)
        if steps is not None and step is not None and step not in steps:
            continue
        new = iv.apply(act)
        positions = getattr(iv, "positions", None)
        if positions is not None:
            axis = _position_axis(iv.site)
            pos = torch.as_tensor(positions, dtype=torch.long, device=act.device) % act.shape[axis]
            merged = act.clone()
            merged.index_copy_(axis, pos, new.index_select(axis, pos))
            new = merged
        act = new
    return act


def _position_axis(site: str) -> int:
    """Token positions: axis 1 of [B, S, d]; the query axis 2 of a text pattern; the key (token)
    axis 3 of a UNet cross-attention pattern; spatial axis 1 of a cross-attention output."""
    if site.startswith("unet.") and site.endswith("hook_pattern"):
        return 3
    return 2 if site.endswith("hook_pattern") else 1


def intervene(model: Any, interventions: Sequence[Any]):
    """`with interp.intervene(model, [...]):` applies the interventions to any forward or pipeline
    call inside the block; every hook and processor is removed on exit, even on exceptions."""
    from .hooks import HookSession

    return HookSession(model, interventions)

"""Interventions: sets of units and what to do to them (mask, amplify), plus seeded random controls.

An intervention is any object with a `site: str` and `apply(act) -> act`; optional attributes
- `positions`: token (or pixel) positions it touches; the others keep their value;
- `steps`: denoising-step indices (denoiser sites only; None = every step). Step i is the i-th
  scheduler step of the current pipeline call: the counter restarts at every pipeline call;
- `branch`: "cond" (default), "uncond" or "both" — which classifier-free-guidance branch it
  edits. Text sites: "cond" is the prompt's encoding, "uncond" the negative prompt's (diffusers
  encodes the prompt first, then the negative prompt, with the same encoder); a text-encoder
  call outside a pipeline call counts as the prompt's. Denoiser sites: the rows of each call
  ([uncond; cond] under CFG);
- `heads`: head indices at sites with heads (q/k/v/z/pattern); the other heads keep their value.
`sae.Steer` and the circuits enhancer plug in so. An intervention may define
`apply_at(act, where)` instead of `apply` to see where it acts (`Where`: step, step count, the
branch of each row), as `Replace` does to take the step and branch row of a captured value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import CultureLensError, SiteError
from .sites import site_axes

BRANCHES = {"uncond": 0, "cond": 1}
BRANCH_CHOICES = ("cond", "uncond", "both")


def unit_axis(site: str) -> int:
    """Heads at q/k/v/z ([B, S, H, d], axis 2) and patterns ([B, H, Q, K], axis 1); channels of UNet
    feature maps ([B, C, h, w], axis 1); everything else the last axis."""
    return site_axes(site)[0]


@dataclass
class Where:
    """Where one call of a site happens: `step` (denoising step, None for text sites), `n_steps`
    (the pipeline call's step count, None outside one) and `branches` (the CFG branch of each row
    of the activation, 0 = uncond, 1 = cond; None when the rows cannot be told apart)."""

    site: str
    step: int | None
    n_steps: int | None
    branches: Tensor | None


def check_branch(iv: Any) -> str:
    branch = getattr(iv, "branch", "cond")
    if branch not in BRANCH_CHOICES:
        raise CultureLensError(f"{iv!r}: branch={branch!r}; use one of {', '.join(map(repr, BRANCH_CHOICES))}")
    return branch


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
    """Base class: subclasses set `site` and implement `apply(act) -> act` (must not modify act in
    place), or `apply_at(act, where)`; see the module doc for positions, steps, branch and heads."""

    site: str
    positions: Sequence[int] | None = None
    steps: Sequence[int] | None = None
    branch: str = "cond"
    heads: Sequence[int] | None = None

    def apply(self, act: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _index(act: Tensor, site: str, idx: Tensor) -> tuple:
    axis = unit_axis(site)
    return (slice(None),) * axis + (idx.to(act.device),) if axis >= 0 else (..., idx.to(act.device))


@dataclass
class Mask(Intervention):
    """Zero- or mean-ablate `units`. `mean` (mode="mean") has one value per unit or per site unit."""

    units: Units
    mode: str = "zero"
    mean: Any = None
    positions: Sequence[int] | None = None
    steps: Sequence[int] | None = None
    branch: str = "cond"
    heads: Sequence[int] | None = None
    site: str = field(init=False)

    def __post_init__(self) -> None:
        self.site = self.units.site
        check_branch(self)
        if self.mode not in ("zero", "mean"):
            raise CultureLensError(f"Mask mode {self.mode!r}: use 'zero' or 'mean'")
        if self.mode == "mean" and self.mean is None:
            raise CultureLensError(
                f"Mask(mode='mean') at {self.site!r} needs mean= (e.g. interp.mean_activation(model, prompts, site))"
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
        axis = unit_axis(self.site)
        if axis >= 0:
            mean = mean.view(*([1] * axis), -1, *([1] * (act.ndim - axis - 1)))
        out[ix] = mean.expand_as(out[ix])
        return out


@dataclass
class Amplify(Intervention):
    """Scale `units` by (1 + lam); lam = 0 is exactly the identity."""

    units: Units
    lam: float
    positions: Sequence[int] | None = None
    steps: Sequence[int] | None = None
    branch: str = "cond"
    heads: Sequence[int] | None = None
    site: str = field(init=False)

    def __post_init__(self) -> None:
        self.site = self.units.site
        check_branch(self)

    def apply(self, act: Float[Tensor, "..."]) -> Float[Tensor, "..."]:
        out = act.clone()
        ix = _index(act, self.site, self.units.indices)
        out[ix] = out[ix] * (1.0 + self.lam)
        return out


@dataclass
class Replace(Intervention):
    """Set the site's activation to `value`; used by activation patching.

    `value` is either broadcastable to the activation, or exactly what `capture_generation`
    returns for a denoiser site, [T, C, B, ...] (T steps; C = 2 rows [uncond, cond] under CFG,
    else 1): then each step takes `value[step]`, each row its branch's and prompt's entry. A
    value with C = 1 (captured without CFG) holds the conditional branch only.
    """

    site: str
    value: Tensor
    positions: Sequence[int] | None = None
    steps: Sequence[int] | None = None
    branch: str = "cond"
    heads: Sequence[int] | None = None

    def __post_init__(self) -> None:
        check_branch(self)
        self.value = torch.as_tensor(self.value)

    def apply(self, act: Tensor) -> Tensor:
        return self.apply_at(act, None)

    def apply_at(self, act: Tensor, where: Where | None) -> Tensor:
        v = self.value
        if v.ndim == act.ndim + 2:
            return self._per_step(act, where).to(act.device, act.dtype)
        try:
            return v.to(act.device, act.dtype).expand_as(act).clone()
        except RuntimeError:
            raise CultureLensError(
                f"Replace at {self.site!r}: value of shape {tuple(v.shape)} does not fit the activation "
                f"{tuple(act.shape)}; pass that shape (or one that broadcasts to it) or, at a denoiser site, "
                f"capture_generation's [T, C, B, ...] = [T, C, B, {', '.join(map(str, act.shape[1:]))}]"
            ) from None

    def _per_step(self, act: Tensor, where: Where | None) -> Tensor:
        v = self.value
        if where is None or where.step is None:
            raise CultureLensError(f"Replace at {self.site!r}: a [T, C, B, ...] value ({tuple(v.shape)}) needs a "
                                   "denoiser site during generation (it is picked by step)")
        if where.step >= v.shape[0]:
            raise CultureLensError(f"Replace at {self.site!r}: value holds {v.shape[0]} steps but this is step "
                                   f"{where.step} (of {where.n_steps}); capture as many steps as the run has")
        vt = v[where.step]  # [C, B, ...]
        n_rows, n_prompts = act.shape[0], vt.shape[1]
        if tuple(vt.shape[2:]) != tuple(act.shape[1:]) or n_rows % n_prompts:
            raise CultureLensError(
                f"Replace at {self.site!r}: value {tuple(v.shape)} = [T, C, B, ...] does not fit an activation of "
                f"{tuple(act.shape)} (rows must be a multiple of B and the rest equal)")
        if where.branches is None:
            raise CultureLensError(f"Replace at {self.site!r}: cannot tell which CFG branch each row is, so a "
                                   "[T, C, B, ...] value cannot be placed")
        branches = where.branches.to(vt.device)
        if vt.shape[0] == 1:
            if self.branch != "cond" and bool((branches == 0).any()):
                raise CultureLensError(
                    f"Replace at {self.site!r}: the value was captured without classifier-free guidance (C = 1, "
                    f"the conditional rows only) but branch={self.branch!r} also edits unconditional rows")
            branches = torch.zeros_like(branches)
        elif vt.shape[0] != 2:
            raise CultureLensError(f"Replace at {self.site!r}: value has C = {vt.shape[0]} branch rows; expected "
                                   "1 (no CFG) or 2 ([uncond, cond])")
        prompt = torch.arange(n_rows, device=vt.device) % n_prompts
        return vt[branches, prompt]


class OnRows(Intervention):
    """`intervention` applied to some prompts of a batch only (`rows`: one bool per prompt; the
    others keep their activation), so prompts that need different interventions (each culture
    its own units) share one batched generation.

    An activation with k times as many rows as prompts (the UNet under classifier-free guidance:
    [uncond; cond]) repeats the pattern k times. That layout does not hold for UNet sites with
    `num_images_per_prompt` > 1, so use one image per prompt there. The wrapped intervention's
    `branch` still applies on top (by default only the conditional rows of the chosen prompts).
    """

    def __init__(self, intervention: Any, rows: Sequence[bool]) -> None:
        self.intervention = intervention
        self.rows = torch.as_tensor(rows, dtype=torch.bool).reshape(-1)
        if not self.rows.numel():
            raise CultureLensError(f"OnRows({intervention!r}): no rows given")

    # The wrapped intervention's site, positions, steps, branch, heads and units are this one's
    # (checked and honoured by the hook engine as usual).
    site = property(lambda self: self.intervention.site)
    positions = property(lambda self: getattr(self.intervention, "positions", None))
    steps = property(lambda self: getattr(self.intervention, "steps", None))
    branch = property(lambda self: getattr(self.intervention, "branch", "cond"))
    heads = property(lambda self: getattr(self.intervention, "heads", None))
    units = property(lambda self: getattr(self.intervention, "units", None))

    @classmethod
    def grouped(cls, owners: Sequence[Any], interventions: Mapping[Any, Sequence[Any]]) -> list["OnRows"]:
        """One batch whose rows belong to owners (row i to `owners[i]`, e.g. its culture): each
        owner's `interventions[owner]` on its own rows only; owners without an entry get none."""
        return [cls(iv, [o == key for o in owners]) for key in dict.fromkeys(owners) for iv in interventions.get(key, ())]

    def apply(self, act: Tensor) -> Tensor:
        return self.apply_at(act, None)

    def apply_at(self, act: Tensor, where: Where | None) -> Tensor:
        n = self.rows.numel()
        if act.shape[0] % n:
            raise CultureLensError(f"OnRows at {self.site!r}: activation has {act.shape[0]} rows, not a multiple "
                                   f"of the {n} prompts the row mask names")
        keep = self.rows.to(act.device).repeat(act.shape[0] // n).view(-1, *([1] * (act.ndim - 1)))
        return torch.where(keep, run(self.intervention, act, where), act)

    def __repr__(self) -> str:
        return f"OnRows({self.intervention!r}, rows={self.rows.nonzero().flatten().tolist()})"


def random_units(units: Units, seed: int = 0, disjoint: bool = True, dim: int | None = None,
                 model: Any = None, match: str | None = None, reference: Any = None, scores: Any = None,
                 n_bins: int = 5) -> Units:
    """Same count, same site, drawn with `seed` (disjoint from `units` unless disjoint=False).

    `match`: None draws uniformly from the site's units (the paper's control; the pool size comes
    from `dim`, else `units.dim`, else the site on `model`); "activity" draws, per unit, among
    units whose firing frequency and mean magnitude on `reference` activations ([n, d]: one
    column per unit, e.g. SAE latents on the probe prompts) fall in the same `n_bins` quantile
    bins; "ranked" takes the next-ranked units by `scores` ([d], e.g. WFS), block `seed`.
    The logic lives in `interp.controls`.
    """
    from . import controls

    if match not in controls.MATCHES:
        raise CultureLensError(f"random_units({units!r}): match={match!r}; use one of {controls.MATCHES}")
    if match == "activity":
        if reference is None:
            raise CultureLensError(f"random_units({units!r}, match='activity') needs reference= activations [n, d]")
        chosen, _ = controls.activity_matched(units.indices, reference, seed, n_bins=n_bins, disjoint=disjoint)
        d = int(torch.as_tensor(reference).shape[-1])
        return Units(units.site, chosen, label=f"activity-matched(seed={seed})", dim=d)
    if match == "ranked":
        if scores is None:
            raise CultureLensError(f"random_units({units!r}, match='ranked') needs scores= (one per unit)")
        chosen = controls.next_ranked(units.indices, scores, seed)
        return Units(units.site, chosen, label=f"next-ranked(block={seed})", dim=int(torch.as_tensor(scores).numel()))
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


def run(iv: Any, act: Tensor, where: Where | None) -> Tensor:
    """`iv.apply_at(act, where)` when the intervention has it, else `iv.apply(act)`."""
    fn = getattr(iv, "apply_at", None)
    return fn(act, where) if callable(fn) else iv.apply(act)


def _default_where(site: str, act: Tensor) -> Where:
    # Outside a pipeline call every row is the prompt's (the conditional branch).
    return Where(site, None, None, torch.ones(act.shape[0], dtype=torch.long, device=act.device))


def is_active(iv: Any, where: Where) -> bool:
    """Whether `iv` acts at this call: its steps include this step and its branch has a row here."""
    steps = getattr(iv, "steps", None)
    if steps is not None and where.step is not None and where.step not in steps:
        return False
    branch = check_branch(iv)
    if branch == "both":
        return True
    if where.branches is None:
        raise CultureLensError(
            f"{iv!r} at {where.site!r}: cannot tell which classifier-free-guidance branch the rows of this call "
            f"belong to (step {where.step}), so branch={branch!r} cannot be honoured; pass branch='both'")
    return bool((where.branches == BRANCHES[branch]).any())


def _merge(act: Tensor, new: Tensor, axis: int, idx: Any) -> Tensor:
    """`act` with `new`'s entries at indices `idx` along `axis`."""
    axis = axis % act.ndim
    pos = torch.as_tensor(idx, dtype=torch.long, device=act.device).reshape(-1) % act.shape[axis]
    merged = act.clone()
    merged.index_copy_(axis, pos, new.index_select(axis, pos))
    return merged


def apply_all(ivs: Sequence[Any], act: Tensor, where: Where | None = None) -> Tensor:
    """Apply interventions in order, honouring `steps`, `branch`, `positions` and `heads`. Returns
    `act` itself (not a copy) when none acts, so callers can tell that nothing changed."""
    for iv in ivs:
        w = where if where is not None else _default_where(iv.site, act)
        if not is_active(iv, w):
            continue
        new = run(iv, act, w)
        branch = check_branch(iv)
        if branch != "both":
            keep = (w.branches.to(act.device) == BRANCHES[branch])
            if not bool(keep.all()):
                new = torch.where(keep.view(-1, *([1] * (act.ndim - 1))), new, act)
        _, head_axis, pos_axis = site_axes(iv.site)
        positions = getattr(iv, "positions", None)
        if positions is not None:
            new = _merge(act, new, pos_axis, positions)
        heads = getattr(iv, "heads", None)
        if heads is not None:
            new = _merge(act, new, head_axis, heads)
        act = new
    return act


def intervene(model: Any, interventions: Sequence[Any]):
    """`with interp.intervene(model, [...]):` applies the interventions to any forward or pipeline
    call inside the block; every hook and processor is removed on exit, even on exceptions."""
    from .hooks import HookSession

    return HookSession(model, interventions)

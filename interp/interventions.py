"""Interventions: sets of units and what to do to them (mask, amplify, replace), plus seeded random
controls. The types only: the rules that apply them at a call are `interp.engine.apply`, the hook
session that runs them is `interp.engine.session` (`interp.intervene`).

An intervention is any object with a `site: str` and `apply(act) -> act` (the `Intervention`
Protocol; `InterventionBase` is the base class of ours, with the defaults and a short repr);
optional attributes, read by the engine with these defaults when absent
- `positions`: token (or pixel) positions it touches; the others keep their value;
- `steps`: denoising-step indices (denoiser sites only; None = every step). Step i is the i-th
  scheduler step of the current pipeline call: the counter restarts at every pipeline call;
- `branch`: "cond" (default), "uncond" or "both" — which classifier-free-guidance branch it
  edits. Text sites: "cond" is the prompt's encoding, "uncond" the negative prompt's (diffusers
  encodes the prompt first, then the negative prompt, with the same encoder); a text-encoder
  call outside a pipeline call counts as the prompt's. Denoiser sites: the rows of each call
  ([uncond; cond] under CFG);
- `heads`: head indices at sites with heads (q/k/v/z/pattern); the other heads keep their value.
Positions, steps, heads and unit indices are lists of ints (a lone int, a float or a bool is
refused, not truncated); unit indices, steps and heads count from 0, positions may count from the
end (-1 = last) but must lie inside the sequence of the call they edit (checked at each call).
`sae.Steer` and the circuits enhancer plug in so. An intervention may define
`apply_at(act, where)` instead of `apply` to see where it acts (`Where`: step, step count, the
branch of each row), as `Replace` does to take the step and branch row of a captured value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from interp import controls
from interp.checks import check_range, describe, finite_number, index_list, is_int, positive_int
from interp.errors import CultureLensError, SiteError
from interp.model.sites import parse, site_axes

# The one definition of the classifier-free-guidance branches (interp.patching imports it):
# BRANCHES maps a branch to its row label in `Where.branches`; BRANCH_CHOICES is every valid
# `branch=` value. Defaults differ on purpose and are stated where they apply: an intervention
# edits branch="cond" (the prompt's side) unless told otherwise; `interp.patch` patches
# branch="both" (all rows of the clean run) unless told otherwise.
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
        what = f"Units at {self.site!r}"
        if self.dim is not None:
            self.dim = positive_int(self.dim, f"{what}: dim")
        raw = self.indices
        if is_int(raw):  # one unit, e.g. scores.argmax()
            raw = [int(raw)]
        elif hasattr(raw, "dtype") and not torch.is_tensor(raw):  # numpy: judge by its dtype
            raw = torch.as_tensor(raw)
        idx = index_list(raw, f"{what}: indices")
        # No negative aliases: -1 and dim-1 name the same unit and would pass the duplicate check.
        negative = [i for i in idx if i < 0]
        if negative:
            raise SiteError(f"{what}: negative indices {negative[:8]}; unit indices count from 0 "
                            "(0..dim-1), with no negative aliases")
        dup = sorted(i for i, n in Counter(idx).items() if n > 1)
        if dup:
            raise CultureLensError(f"{what}: duplicate indices {dup[:8]}")
        if self.dim is not None:
            check_range(idx, self.dim, f"{what}: indices")
        self.indices = torch.tensor(idx, dtype=torch.long)

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __repr__(self) -> str:
        lab = f", label={self.label!r}" if self.label else ""
        return f"Units({self.site!r}, n={len(self)}{lab})"


@runtime_checkable
class Intervention(Protocol):
    """What the edit engine runs: anything with a `site` and `apply(act) -> act` that does not modify
    `act` in place. Optional attributes (`positions`, `steps`, `branch`, `heads`, `reads_only`) and
    `apply_at(act, where)` are read when present; see the module doc."""

    site: str

    def apply(self, act: Tensor) -> Tensor: ...


class InterventionBase:
    """Base class of culturelens' interventions: subclasses set `site` and implement
    `apply(act) -> act` (must not modify act in place), or `apply_at(act, where)`; the optional
    attributes default to "everywhere" (all positions, steps and heads; the conditional branch)."""

    site: str
    positions: Sequence[int] | None = None
    steps: Sequence[int] | None = None
    branch: str = "cond"
    heads: Sequence[int] | None = None
    # True for an observer that returns `act` itself (e.g. attribution's accumulators): the engine
    # then computes the module's output exactly as without it (see interp/engine/attention.py).
    reads_only: bool = False

    def apply(self, act: Tensor) -> Tensor:
        """`apply_at(act, None)` for a subclass that defines only that (a call outside a pipeline run)."""
        at = getattr(self, "apply_at", None)
        if at is None:
            raise NotImplementedError(f"{type(self).__name__} defines neither apply nor apply_at")
        return at(act, None)

    def __repr__(self) -> str:
        # Short on purpose: errors quote interventions, and a dataclass repr would print `mean` or
        # `value` tensors in full.
        units = getattr(self, "units", None)
        parts = [repr(units) if units is not None else repr(getattr(self, "site", "?"))]
        for name in ("mode", "lam"):
            if hasattr(self, name):
                parts.append(f"{name}={describe(getattr(self, name))}")
        for name in ("positions", "steps", "heads"):
            value = getattr(self, name, None)
            if value is not None:
                parts.append(f"{name}={describe(value)}")
        if getattr(self, "branch", "cond") != "cond":
            parts.append(f"branch={self.branch!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


def check_indexing(iv: Any) -> None:
    """Refuse `positions`, `steps` and `heads` that are not lists of ints, and negative steps or
    heads (ranges are checked against the model and the call: heads and steps by the hook engine,
    positions at each call by `interp.engine.apply.apply_all`)."""
    for name in ("positions", "steps", "heads"):
        values = getattr(iv, name, None)
        if values is None:
            continue
        idx = index_list(values, f"{iv!r}: {name}=")
        if name != "positions" and any(i < 0 for i in idx):
            noun = "denoising-step indices" if name == "steps" else "head indices"
            raise CultureLensError(f"{iv!r}: {name}= must be non-negative {noun} (0..n-1), got "
                                   f"{[i for i in idx if i < 0][:8]}")


def _index(act: Tensor, site: str, idx: Tensor) -> tuple:
    axis = unit_axis(site)
    return (slice(None),) * axis + (idx.to(act.device),) if axis >= 0 else (..., idx.to(act.device))


@dataclass(repr=False)
class Mask(InterventionBase):
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
        if self.mode == "zero" and self.mean is not None:
            raise CultureLensError(f"Mask at {self.site!r}: mean= given with mode='zero'; pass mode='mean' to use it")
        check_indexing(self)
        if self.mean is not None:
            self.mean = self._check_mean(self.mean)

    def _check_mean(self, mean: Any) -> Tensor:
        """One finite value per unit, or per unit of the site (then length `units.dim` when known)."""
        what = f"Mask(mode='mean') at {self.site!r}: mean"
        try:
            m = torch.as_tensor(mean)
        except (TypeError, ValueError, RuntimeError):
            raise CultureLensError(f"{what}: expected a vector of numbers, got {describe(mean)}") from None
        if not (m.is_floating_point() or m.dtype in (torch.int32, torch.int64)):
            raise CultureLensError(f"{what}: expected real numbers, got a {m.dtype} tensor")
        m = m.reshape(-1).float() if not m.is_floating_point() else m.reshape(-1)
        n_bad = int((~torch.isfinite(m)).sum())
        if n_bad:
            raise CultureLensError(f"{what}: {n_bad} of its {m.numel()} values are NaN or infinite")
        dim = self.units.dim
        if m.numel() != len(self.units) and (dim is not None and m.numel() != dim):
            raise CultureLensError(f"{what} has {m.numel()} values; expected {len(self.units)} (one per unit) or "
                                   f"{dim} (one per unit of the site)")
        return m

    def apply(self, act: Float[Tensor, "..."]) -> Float[Tensor, "..."]:
        out = act.clone()
        ix = _index(act, self.site, self.units.indices)
        if self.mode == "zero":
            out[ix] = 0
            return out
        mean = torch.as_tensor(self.mean, dtype=act.dtype, device=act.device).reshape(-1)
        axis = unit_axis(self.site)
        if mean.numel() != len(self.units):
            # Checked here because the site's width is known only now (mean[indices] of a vector of
            # another length would silently take the wrong values).
            width = act.shape[axis]
            if mean.numel() != width:
                raise CultureLensError(
                    f"Mask(mode='mean') at {self.site!r}: mean has {mean.numel()} values; expected {len(self.units)} "
                    f"(one per unit) or {width} (one per unit of the site)")
            mean = mean[self.units.indices.to(act.device)]
        if axis >= 0:
            mean = mean.view(*([1] * axis), -1, *([1] * (act.ndim - axis - 1)))
        out[ix] = mean.expand_as(out[ix])
        return out


@dataclass(repr=False)
class Amplify(InterventionBase):
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
        # NaN or inf would turn every edited activation (and the image) into NaN.
        self.lam = finite_number(self.lam, f"Amplify at {self.site!r}: lam")
        check_indexing(self)

    def apply(self, act: Float[Tensor, "..."]) -> Float[Tensor, "..."]:
        out = act.clone()
        ix = _index(act, self.site, self.units.indices)
        out[ix] = out[ix] * (1.0 + self.lam)
        return out


@dataclass(repr=False)
class Replace(InterventionBase):
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
        check_indexing(self)
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


class OnRows(InterventionBase):
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
        flags = rows.reshape(-1).tolist() if torch.is_tensor(rows) else list(rows)
        # A list of row numbers ([0, 2]) read as a mask would pick other rows without a word.
        if torch.is_tensor(rows) and rows.dtype != torch.bool or not all(isinstance(f, (bool, np.bool_)) for f in flags):
            raise CultureLensError(f"OnRows({intervention!r}): rows= takes one bool per prompt, got "
                                   f"{describe(rows)}; for row numbers use [i in rows for i in range(n)]")
        self.rows = torch.tensor([bool(f) for f in flags], dtype=torch.bool)
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

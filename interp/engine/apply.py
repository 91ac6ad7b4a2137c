"""The apply rules: which interventions act at one call (steps, branch) and how their edit is merged
into the activation (branch rows, `positions`, `heads`). The hook session (`interp.engine.session`)
and capture (`interp.methods.capture`) call `apply_all` at every site they edit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from interp.checks import check_range, index_list
from interp.errors import CultureLensError
from interp.interventions import BRANCHES, Where, check_branch, run
from interp.model.sites import site_axes


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


def _merge(act: Tensor, new: Tensor, axis: int, idx: Any, what: str, negative: bool) -> Tensor:
    """`act` with `new`'s entries at indices `idx` along `axis`; an index outside the axis is an
    error naming `what` (never wrapped around: [16] on 16 tokens is not the BOS token)."""
    axis = axis % act.ndim
    idx = index_list(idx, what)
    n = act.shape[axis]
    check_range(idx, n, what, negative=negative)
    pos = torch.tensor(idx, dtype=torch.long, device=act.device) % n
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
            new = _merge(act, new, pos_axis, positions, f"{iv!r} at {iv.site!r}: positions", negative=True)
        heads = getattr(iv, "heads", None)
        if heads is not None:
            new = _merge(act, new, head_axis, heads, f"{iv!r} at {iv.site!r}: heads", negative=False)
        act = new
    return act

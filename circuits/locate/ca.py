"""Cross-attention between token sets (PAPER.md Eq. 1-3) on given attention patterns.

Pure tensor code: patterns in, CA per layer and prompt out. The scan in ``scan.py`` feeds
it captured patterns and token spans."""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from interp.errors import CultureLensError

Direction = Literal["modifier->noun", "noun->modifier", "both"]
DIRECTIONS: tuple[str, ...] = ("modifier->noun", "noun->modifier", "both")


class DirectionMaskedError(CultureLensError):
    """Every (query, key) entry of the requested direction is masked (causal encoder)."""


def indicator(sets: Sequence[Sequence[int]], seq_len: int, what: str = "token set") -> Float[Tensor, "B S"]:
    """One row per prompt, 1.0 at the positions of that prompt's set."""
    out = torch.zeros(len(sets), seq_len, dtype=torch.float64)
    for b, s in enumerate(sets):
        for p in s:
            if not 0 <= int(p) < seq_len:
                raise CultureLensError(f"{what} of prompt {b}: position {p} outside [0, {seq_len})")
            out[b, int(p)] = 1.0
    return out


def allowed_mask(seq_len: int, causal: bool) -> Bool[Tensor, "S S"]:
    """Which query->key entries an encoder can attend at all (query rows, key columns)."""
    full = torch.ones(seq_len, seq_len, dtype=torch.bool)
    return torch.tril(full) if causal else full


def block_ca(
    pattern: Float[Tensor, "B H S S"] | Float[Tensor, "B S S"],
    queries: Float[Tensor, "B S"],
    keys: Float[Tensor, "B S"],
) -> Float[Tensor, " B"]:
    """Eq. 1-2 for one layer: head-averaged attention from the query set to the key set,
    averaged over the |Q|*|K| block. An empty set gives CA = 0 (no source, no attention)."""
    # Head mean in the activation dtype (no float64 copy of all heads), the block sums in float64.
    p = (pattern.mean(1) if pattern.ndim == 4 else pattern).to(torch.float64)
    if p.ndim != 3 or p.shape[-1] != p.shape[-2]:
        raise CultureLensError(f"attention pattern must be [B, H, S, S] or [B, S, S]; got {tuple(pattern.shape)}")
    q, k = queries.to(p), keys.to(p)
    total = torch.einsum("bqk,bq,bk->b", p, q, k)
    n = q.sum(1) * k.sum(1)
    return torch.where(n > 0, total / n.clamp_min(1), torch.zeros_like(total))


def block_allowed(
    queries: Float[Tensor, "B S"], keys: Float[Tensor, "B S"], causal: bool
) -> Bool[Tensor, " B"]:
    """Whether each prompt's query->key block has at least one entry the encoder can attend."""
    allowed = allowed_mask(queries.shape[1], causal).to(torch.float64)
    return torch.einsum("bq,bk,qk->b", queries.to(torch.float64), keys.to(torch.float64), allowed) > 0


def directional_sets(
    direction: str, modifier: Float[Tensor, "B S"], noun: Float[Tensor, "B S"]
) -> list[tuple[Tensor, Tensor]]:
    """(queries, keys) pairs for a direction; "both" gives the two blocks, averaged later."""
    if direction == "modifier->noun":
        return [(modifier, noun)]
    if direction == "noun->modifier":
        return [(noun, modifier)]
    if direction == "both":
        return [(modifier, noun), (noun, modifier)]
    raise CultureLensError(f"direction must be one of {DIRECTIONS}; got {direction!r}")


def prompt_ca(
    pattern: Float[Tensor, "B H S S"] | Float[Tensor, "B S S"],
    modifier: Float[Tensor, "B S"],
    noun: Float[Tensor, "B S"],
    direction: str,
) -> Float[Tensor, " B"]:
    """CA of each prompt at one layer in the given direction (``both`` = mean of the two blocks)."""
    blocks = directional_sets(direction, modifier, noun)
    return torch.stack([block_ca(pattern, q, k) for q, k in blocks]).mean(0)


def neighbour_excess(values: Float[Tensor, "... L"]) -> Float[Tensor, "... L"]:
    """values[l] minus the mean of its neighbours (one neighbour at the ends).
    The neighbour-peak rule marks layer l when this clearly exceeds 0."""
    v = torch.as_tensor(values, dtype=torch.float64)
    n = v.shape[-1]
    if n < 2:
        return torch.zeros_like(v)
    left = torch.cat([v[..., 1:2], v[..., :-1]], -1)
    right = torch.cat([v[..., 1:], v[..., -2:-1]], -1)
    return v - 0.5 * (left + right)

"""One row layout for every site: an activation as [B, P, D] rows (B calls' rows, P positions,
D the vector an SAE reads), and back. `ActivationStore`, `Steer` and `feature_maps` share it, so
a latent index means the same thing in the store, in steering and in a map.

- UNet feature maps [B, C, h, w] (resnet / transformer-block outputs): P = h·w pixels in raster
  order, D = C channels;
- heads [B, P, H, d] (q/k/v/z): D = d of one `head`, or all heads concatenated (H·d);
- patterns [B, H, Q, K]: P = queries, D = K keys of one `head` (or H·K);
- everything else [B, P, D] (text tokens, attention outputs, MMDiT streams) as is."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from interp.model.sites import site_axes
from sae.errors import SAEError


def _kind(site: str) -> str:
    unit, head, pos = site_axes(site)
    if pos is None:
        return "map"
    if head is not None:
        return "pattern" if site.endswith("hook_pattern") else "heads"
    return "plain"


def has_heads(site: str) -> bool:
    """Whether `head=` applies at this site (q/k/v/z and patterns)."""
    return _kind(site) in ("heads", "pattern")


def as_rows(site: str, act: Tensor, head: int | None = None) -> Float[Tensor, "B P D"]:
    """The activation of `site` as [B, P, D] rows (a view where the layout allows)."""
    kind = _kind(site)
    if head is not None and kind not in ("heads", "pattern"):
        raise SAEError(f"site {site}: head={head} at a site without heads (heads exist at hook_q/k/v/z/pattern)")
    if kind == "map":
        if act.ndim != 4:
            raise SAEError(f"site {site}: activation {tuple(act.shape)}, expected a feature map [B, C, h, w]")
        return act.flatten(2).transpose(1, 2)
    if kind == "plain":
        return act[None] if act.ndim == 2 else act  # a bare [n, d] block is one row of n positions
    if act.ndim != 4:
        raise SAEError(f"site {site}: activation {tuple(act.shape)}, expected 4 axes")
    n_heads = act.shape[2] if kind == "heads" else act.shape[1]
    if head is not None and not 0 <= head < n_heads:
        raise SAEError(f"site {site}: head {head} out of range; the site has heads 0..{n_heads - 1}")
    if kind == "heads":
        return act[:, :, head] if head is not None else act.flatten(2)
    return act[:, head] if head is not None else act.transpose(1, 2).flatten(2)


def from_rows(site: str, rows: Float[Tensor, "B P D"], act: Tensor, head: int | None = None) -> Tensor:
    """Inverse of `as_rows`: `act`'s layout with `rows` written in (a new tensor)."""
    kind = _kind(site)
    if kind == "map":
        return rows.transpose(1, 2).reshape(act.shape)
    if kind == "plain":
        return rows.reshape(act.shape)
    if head is None:
        if kind == "heads":
            return rows.reshape(act.shape)
        B, H, Q, K = act.shape
        return rows.reshape(B, Q, H, K).transpose(1, 2).contiguous()
    out = act.clone()
    if kind == "heads":
        out[:, :, head] = rows
    else:
        out[:, head] = rows
    return out

"""One site-naming grammar for every family, resolved to a module and what to read there.

Text sites: `{prefix}.blocks.{l}.hook_resid_post | attn.hook_pattern | hook_attn_out | mlp.hook_post`
with prefix "text", "text_2", "text_3". UNet cross-attention sites:
`unet.{down|mid|up}.{i}.attn.{j}.attn2.hook_out | hook_pattern` (transformer block 0 of that
attention), and `unet.{down|mid|up}.{i}.attn.{j}.block.{k}.attn2....` for SDXL-style attentions
holding several transformer blocks (k = 0 is the short form).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import SiteError
from .model import ARCH_LAYOUT, get_path

if TYPE_CHECKING:
    from .model import Model

TEXT_HOOKS = {
    "hook_resid_post": "resid_post",
    "attn.hook_pattern": "pattern",
    "hook_attn_out": "attn_out",
    "mlp.hook_post": "mlp_post",
}
# Execution order inside one layer: nnsight needs requests in the order the model runs them.
STAGE = {"pattern": 0, "attn_out": 1, "mlp_post": 2, "resid_post": 3, "xattn_pattern": 0, "xattn_out": 1}
_TEXT_RE = re.compile(r"^(text(?:_\d)?)\.blocks\.(-?\d+)\.(.+)$")
_UNET_RE = re.compile(r"^unet\.(down|mid|up)\.(\d+)\.attn\.(\d+)\.(?:block\.(\d+)\.)?attn2\.(hook_out|hook_pattern)$")


@dataclass(frozen=True)
class Site:
    """A resolved site. `dim` is the number of units along `unit_axis` (neurons, channels or heads)."""

    name: str
    encoder: str  # "text", "text_2", "text_3" or "unet"
    layer: int | tuple[str, int, int, int]
    kind: str
    dim: int
    module_path: str  # relative to the encoder module (text) or the denoiser (unet)
    mode: str  # "out", "outK", "in0", or "scores" (UNet attention probabilities)
    unit_axis: int

    @property
    def order(self) -> tuple:
        """Sort key in execution order (text: layer then stage; UNet: down, mid, up blocks)."""
        if isinstance(self.layer, int):
            return (self.encoder, self.layer, 0, 0, 0, STAGE[self.kind])
        where, i, j, k = self.layer
        return (self.encoder, {"down": 0, "mid": 1, "up": 2}[where], i, j, k, STAGE[self.kind])

    @property
    def writable(self) -> bool:
        """Text attention patterns are read from eager attention's returned weights: read-only."""
        return self.kind != "pattern"


def text_sites(model: "Model") -> list[Site]:
    out = []
    for prefix, enc in model.encoders.items():
        for layer in range(enc.n_layers):
            for hook in TEXT_HOOKS:
                out.append(_text_site(model, prefix, layer, hook))
    return out


def _text_site(model: "Model", prefix: str, layer: int, hook: str) -> Site:
    enc = model.encoders[prefix]
    kind = TEXT_HOOKS[hook]
    sub, mode = ARCH_LAYOUT[enc.arch][kind]
    dim = {"resid_post": enc.d_model, "attn_out": enc.d_model, "mlp_post": enc.d_mlp, "pattern": enc.n_heads}[kind]
    path = f"{enc.layers_path}.{layer}" + (f".{sub}" if sub else "")
    return Site(f"{prefix}.blocks.{layer}.{hook}", prefix, layer, kind, dim, path, mode, 1 if kind == "pattern" else -1)


def unet_sites(model: "Model") -> list[Site]:
    """Cross-attention sites of a UNet (none for SD3's MMDiT, which has joint attention only)."""
    if not hasattr(model.pipe, "unet"):
        return []
    unet = model.pipe.unet
    groups = [("down", i, b) for i, b in enumerate(unet.down_blocks)]
    groups += [("mid", 0, unet.mid_block)] if unet.mid_block is not None else []
    groups += [("up", i, b) for i, b in enumerate(unet.up_blocks)]
    out = []
    for where, i, block in groups:
        for j, attn in enumerate(getattr(block, "attentions", None) or []):
            for k, tb in enumerate(attn.transformer_blocks):
                a2 = getattr(tb, "attn2", None)
                if a2 is None:
                    continue
                stem = f"unet.{where}.{i}.attn.{j}." + (f"block.{k}." if k else "") + "attn2"
                path = f"{where}_blocks.{i}" if where != "mid" else "mid_block"
                path += f".attentions.{j}.transformer_blocks.{k}.attn2"
                out.append(Site(f"{stem}.hook_out", "unet", (where, i, j, k), "xattn_out",
                                a2.to_out[0].out_features, path, "out", -1))
                out.append(Site(f"{stem}.hook_pattern", "unet", (where, i, j, k), "xattn_pattern",
                                a2.heads, path, "scores", 1))
    return out


def all_sites(model: "Model") -> list[Site]:
    return text_sites(model) + unet_sites(model)


def parse(model: "Model", name: str) -> Site:
    """Resolve a site name on `model`; an unknown name or layer raises SiteError listing valid ones."""
    if isinstance(name, Site):
        return name
    m = _TEXT_RE.match(name)
    if m:
        prefix, layer, hook = m.group(1), int(m.group(2)), m.group(3)
        if prefix not in model.encoders:
            raise SiteError(f"site {name!r}: no encoder {prefix!r}; this {model.family} model has {list(model.encoders)}")
        n = model.encoders[prefix].n_layers
        if hook not in TEXT_HOOKS:
            raise SiteError(f"site {name!r}: unknown hook {hook!r}; valid hooks: {', '.join(TEXT_HOOKS)}")
        if not 0 <= layer < n:
            raise SiteError(f"site {name!r}: layer {layer} out of range; {prefix} has layers 0..{n - 1}")
        return _text_site(model, prefix, layer, hook)
    if name.startswith("unet.") and model.family != "sd3":
        m = _UNET_RE.match(name)
        if m:
            canon = name.replace(".block.0.", ".")
            for s in unet_sites(model):
                if s.name == canon:
                    return s
    valid = all_sites(model)
    examples = [s.name for s in valid if s.encoder != "unet" and s.layer == 0] + [
        s.name for s in valid if s.encoder == "unet"]
    raise SiteError(
        f"unknown site {name!r} for this {model.family} model. Valid sites ({len(valid)}): "
        + ", ".join(examples) + " (and the same text hooks for every layer; see model.sites())"
    )


def check_indices(site: Site, indices: Any) -> None:
    """Raise SiteError if a unit index is outside 0..dim-1 for `site`."""
    import torch

    idx = torch.as_tensor(indices).reshape(-1)
    if idx.numel() and (int(idx.min()) < -site.dim or int(idx.max()) >= site.dim):
        bad = [int(i) for i in idx if not -site.dim <= int(i) < site.dim]
        unit = "heads" if site.unit_axis == 1 else "units"
        raise SiteError(f"site {site.name!r}: index {bad[:5]} out of range; valid {unit} are 0..{site.dim - 1}")


def resolve_module(model: "Model", site: Site) -> Any:
    root = model.encoders[site.encoder].module if site.encoder != "unet" else model.pipe.unet
    return get_path(root, site.module_path)

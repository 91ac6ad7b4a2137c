"""One site-naming grammar for every family, resolved to a module and what to read there.

Shapes (B = rows of one call: prompts, or [uncond; cond] under classifier-free guidance in one
UNet/SD3 call; S = tokens; H = heads; d = head size; Q/K = query/key positions; N = joint
positions; h×w = a feature map). Units are the last axis unless said otherwise.

Text encoders (prefix "text", "text_2", "text_3"):
  `{prefix}.blocks.{l}.hook_resid_post`    [B, S, d_model]
  `{prefix}.blocks.{l}.hook_attn_out`      [B, S, d_model]
  `{prefix}.blocks.{l}.mlp.hook_post`      [B, S, d_mlp]
  `{prefix}.blocks.{l}.attn.hook_pattern`  [B, H, S, S] (units = heads, axis 1; read-only;
      read from eager attention's returned weights, so reading it switches the encoder to eager)
  `{prefix}.blocks.{l}.attn.hook_q|hook_k|hook_v`  [B, S, H, d] (units = heads, axis 2;
      positions axis 1): the query / key / value projection's output, split per head
  `{prefix}.blocks.{l}.attn.hook_z`        [B, S, H, d]: the per-head attention output, i.e. the
      input of the output projection (hook_attn_out = out_proj(z) on every architecture here)
  q/k/v/z are Linear boundaries (the module tensor [B, S, H·d] seen as [B, S, H, d], head h =
  features h·d..(h+1)·d-1), readable and writable, and need no eager attention: the attention
  math itself (scaling, masks, kernel) is untouched, so reading them changes nothing, bit for bit.
  What each is exactly (transformers 5.24):
  - CLIP: `self_attn.q_proj` / `k_proj` / `v_proj` outputs, with bias and *unscaled* (CLIPAttention
    passes scaling=d^-0.5 to the attention function; q_proj's output does not carry it);
    z = the input of `self_attn.out_proj`;
  - XLM-R, BERT (e.g. multilingual-e5-small): `attention.self.query` / `key` / `value` outputs
    (unscaled; the attention function scales by d^-0.5); z = the input of `attention.output.dense`
    (hook_attn_out is that Linear's output, before dropout, residual and LayerNorm);
  - T5: `layer.0.SelfAttention.q` / `k` / `v` outputs (no bias); T5 attention applies no scaling at
    all (scaling = 1.0: the 1/√d is folded into the trained q weights) and adds its relative
    position bias to the scores, which q/k do not contain; z = the input of `SelfAttention.o`;
    d = d_kv, which need not be d_model / H.
UNet (SD 1.x/2.x, SDXL, AltDiffusion, the organism); `.block.{k}` only for k > 0
(`.block.0.` is accepted as an alias):
  `unet.{down|mid|up}.{i}.attn.{j}[.block.{k}].{attn1|attn2}.hook_q`        [B, Q, H, d]
      ... `.hook_k` / `.hook_v`                                            [B, K, H, d]
      ... `.hook_z` (per-head output before the output projection)         [B, Q, H, d]
      ... `.hook_pattern` (softmax probabilities)                          [B, H, Q, K]
      ... `.hook_out` (the attention module's output)                      [B, Q, C]
  (q/k/v/z/pattern: units = heads; Q = h·w pixels of that resolution; attn1 is
  self-attention (K = Q), attn2 cross-attention (K = text tokens); positions are the key
  axis of a pattern, the token axis otherwise.)
  `unet.{down|mid|up}.{i}.attn.{j}.hook_out`    [B, C, h, w] (the Transformer2DModel output;
                                                  units = channels, axis 1)
  `unet.{down|mid|up}.{i}.resnet.{j}.hook_out`  [B, C, h, w] (units = channels, axis 1)
MMDiT (SD3 and FLUX double-stream blocks `transformer.blocks.{i}`, FLUX single-stream blocks
`transformer.single_blocks.{i}`):
  `...attn.hook_q|hook_k|hook_v|hook_z` [B, N, H, d] and `...attn.hook_pattern` [B, H, N, N]
      over the joint sequence (SD3: [image; text], FLUX: [text; image]; q/k after RoPE on
      FLUX); `Model.joint_positions()` says which positions are text and which image.
  `...hook_img_out` [B, N_img, D], `...hook_txt_out` [B, N_txt, D] (the block's two outputs;
      SD3's last block has no text output).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import SiteError
from interp.model.layout import ARCH_LAYOUT, get_path

if TYPE_CHECKING:
    from interp.model.model import Model

TEXT_HOOKS = {
    "hook_resid_post": "resid_post",
    "attn.hook_pattern": "pattern",
    "hook_attn_out": "attn_out",
    "mlp.hook_post": "mlp_post",
    "attn.hook_q": "attn_q",
    "attn.hook_k": "attn_k",
    "attn.hook_v": "attn_v",
    "attn.hook_z": "attn_z",
}
# Text kinds read at a Linear boundary and seen per head ([B, S, H·d] -> [B, S, H, d]).
TEXT_HEAD_KINDS = ("attn_q", "attn_k", "attn_v", "attn_z")
ATTN_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_pattern", "hook_out")
# Hooks computed inside our attention processor (interp/engine/attention.py), not by a module hook.
PROC_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_pattern", "hook_z")
# Execution order inside one denoiser attention / block: nnsight needs requests in the order the
# model runs them (text layers: ARCH_LAYOUT's per-architecture "order", kept in `Site.stage`).
STAGE = {"hook_q": 0, "hook_k": 1, "hook_v": 2, "hook_pattern": 3, "hook_z": 4, "hook_out": 5,
         "hook_txt_out": 6, "hook_img_out": 7}
_TEXT_RE = re.compile(r"^(text(?:_\d)?)\.blocks\.(-?\d+)\.(.+)$")
DENOISER_PREFIXES = ("unet", "transformer")


@dataclass(frozen=True)
class Site:
    """A resolved site. `dim` is the number of units along `unit_axis` (neurons, channels or heads);
    `head_axis` is the heads axis (None: the site has no heads); `position_axis` the token/pixel
    axis that `positions=` selects (None: positions do not apply). `heads_view`: the module tensor
    is [B, S, H·d] and the site is its per-head view [B, S, H, d] (text q/k/v/z; see `view` and
    `unview`). `stage`: the site's place in its text layer's execution order (None: from STAGE)."""

    name: str
    encoder: str  # "text", "text_2", "text_3", "unet" or "transformer"
    layer: Any  # text: layer index; denoiser: a tuple locating the block
    kind: str
    dim: int
    module_path: str  # relative to the encoder module (text) or the denoiser
    mode: str  # "out", "outK", "in0", or "proc" (computed by our attention processor)
    unit_axis: int
    head_axis: int | None = None
    position_axis: int | None = 1
    heads_view: bool = False
    stage: int | None = None

    @property
    def order(self) -> tuple:
        """Sort key in execution order (text: layer then stage; denoiser: block order then stage)."""
        stage = self.stage if self.stage is not None else STAGE.get(self.kind, STAGE.get(self.hook, 0))
        if isinstance(self.layer, int):
            return (self.encoder, self.layer, 0, 0, 0, 0, stage)
        return (self.encoder,) + tuple(self.layer) + (stage,)

    @property
    def denoiser(self) -> bool:
        """A UNet or MMDiT site (acts once per denoising step), not a text-encoder site."""
        return self.encoder in DENOISER_PREFIXES

    @property
    def hook(self) -> str:
        """The last name part: hook_q, hook_out, hook_resid_post, ..."""
        return self.name.rsplit(".", 1)[-1]

    @property
    def writable(self) -> bool:
        """Text attention patterns are read from eager attention's returned weights: read-only."""
        return self.kind != "pattern"

    def view(self, raw: Float[Tensor, "B S HD"]) -> Float[Tensor, "B S H d"]:
        """The site's activation from the tensor its module holds: for a heads view, [B, S, H·d] ->
        [B, S, H, d] (a view, no copy); any other site's tensor as it is. The one place (with
        `unview`) where the hook engine and the nnsight path turn module tensors into sites."""
        if not self.heads_view:
            return raw
        if raw.ndim != 3 or raw.shape[-1] % self.dim:
            raise SiteError(f"site {self.name!r}: the module tensor at {self.module_path!r} has shape "
                            f"{tuple(raw.shape)}, expected [B, S, H·d] with H = {self.dim} heads")
        return raw.unflatten(-1, (self.dim, raw.shape[-1] // self.dim))

    def unview(self, act: Float[Tensor, "B S H d"]) -> Float[Tensor, "B S HD"]:
        """Inverse of `view`: a (possibly edited) activation back in its module's layout."""
        if not self.heads_view:
            return act
        if act.ndim != 4 or act.shape[2] != self.dim:
            raise SiteError(f"site {self.name!r}: an edit returned shape {tuple(act.shape)}; the site is "
                            f"[B, S, H, d] with H = {self.dim} heads")
        return act.flatten(-2)


class TextBlock(NamedTuple):
    """A text-encoder block site's name, split: `text_2.blocks.9.hook_resid_post` ->
    ("text_2", 9, "hook_resid_post")."""

    encoder: str
    layer: int
    rest: str


def text_block(name: str) -> TextBlock:
    """The one parser of text block site names (no model needed; `parse` also checks the layer
    exists). A name that is not `text[_N].blocks.{l}.…` is a SiteError naming it."""
    m = _TEXT_RE.match(name) if isinstance(name, str) else None
    if m is None:
        raise SiteError(f"{name!r} is not a text-encoder block site (text[_N].blocks.{{layer}}.<hook>)")
    return TextBlock(m.group(1), int(m.group(2)), m.group(3))


def site_axes(name: str) -> tuple[int, int | None, int | None]:
    """(unit axis, head axis, position axis) of a site, from its name alone (see the module doc)."""
    hook = name.rsplit(".", 1)[-1]
    denoiser = name.split(".", 1)[0] in DENOISER_PREFIXES
    if hook == "hook_pattern":
        # text patterns: positions are queries; denoiser patterns: keys (text tokens in cross-attention)
        return 1, 1, 3 if denoiser else 2
    if hook in ("hook_q", "hook_k", "hook_v", "hook_z"):  # [B, S, H, d] on text and denoiser alike
        return 2, 2, 1
    if name.startswith("unet.") and hook == "hook_out" and not re.search(r"\.attn[12]\.hook_out$", name):
        return 1, None, None  # feature maps [B, C, h, w]
    return -1, None, 1


def _site(name: str, encoder: str, layer: Any, kind: str, dim: int, path: str, mode: str,
          heads_view: bool = False, stage: int | None = None) -> Site:
    unit, head, pos = site_axes(name)
    return Site(name, encoder, layer, kind, dim, path, mode, unit, head, pos, heads_view, stage)


def edit_through(site: Site, raw: Tensor, edit: Callable[[Tensor], Tensor]) -> Tensor:
    """`edit` applied to the site's activation inside the module tensor `raw`, in the module's
    layout again; `raw` itself when `edit` returns its input (nothing changed: the module then
    runs on its own tensor, bit for bit)."""
    act = site.view(raw)
    new = edit(act)
    return raw if new is act else site.unview(new)


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
    layout = ARCH_LAYOUT[enc.arch]
    sub, mode = layout[kind]
    heads = kind == "pattern" or kind in TEXT_HEAD_KINDS
    dim = enc.n_heads if heads else {"resid_post": enc.d_model, "attn_out": enc.d_model, "mlp_post": enc.d_mlp}[kind]
    path = f"{enc.layers_path}.{layer}" + (f".{sub}" if sub else "")
    return _site(f"{prefix}.blocks.{layer}.{hook}", prefix, layer, kind, dim, path, mode,
                 heads_view=kind in TEXT_HEAD_KINDS, stage=layout["order"].index(kind))


def _attn_sites(stem: str, encoder: str, layer: tuple, attn: Any, path: str, kind_prefix: str,
                with_out: bool) -> list[Site]:
    """The processor sites (q, k, v, z, pattern) of one attention module, plus its output."""
    out = []
    for hook in ATTN_HOOKS:
        if hook == "hook_out" and not with_out:
            continue
        if hook == "hook_out":
            out.append(_site(f"{stem}.hook_out", encoder, layer, f"{kind_prefix}_out", attn.to_out[0].out_features,
                             path, "out"))
        else:
            out.append(_site(f"{stem}.{hook}", encoder, layer, f"{kind_prefix}_{hook[5:]}", attn.heads, path, "proc"))
    return out


def unet_sites(model: "Model") -> list[Site]:
    """Sites of a UNet denoiser: attentions (attn1/attn2 hooks, block output) and resnets."""
    if not hasattr(model.pipe, "unet"):
        return []
    unet = model.pipe.unet
    groups = [("down", i, b, f"down_blocks.{i}") for i, b in enumerate(unet.down_blocks)]
    groups += [("mid", 0, unet.mid_block, "mid_block")] if unet.mid_block is not None else []
    groups += [("up", i, b, f"up_blocks.{i}") for i, b in enumerate(unet.up_blocks)]
    order = {"down": 0, "mid": 1, "up": 2}
    out = []
    for where, i, block, bpath in groups:
        # resnet j runs before attention j inside a block (mid: resnet 0, attn 0, resnet 1)
        for j, res in enumerate(getattr(block, "resnets", None) or []):
            out.append(_site(f"unet.{where}.{i}.resnet.{j}.hook_out", "unet", (order[where], i, j, 0, 0),
                             "resnet_out", res.out_channels, f"{bpath}.resnets.{j}", "out"))
        for j, attn in enumerate(getattr(block, "attentions", None) or []):
            tpath = f"{bpath}.attentions.{j}"
            for k, tb in enumerate(getattr(attn, "transformer_blocks", None) or []):
                for n, name in ((1, "attn1"), (2, "attn2")):
                    a = getattr(tb, name, None)
                    if a is None:
                        continue
                    stem = f"unet.{where}.{i}.attn.{j}." + (f"block.{k}." if k else "") + name
                    out += _attn_sites(stem, "unet", (order[where], i, j, 1 + k, n), a,
                                       f"{tpath}.transformer_blocks.{k}.{name}", "xattn" if n == 2 else "sattn", True)
            channels = getattr(attn.config, "out_channels", None) or attn.config.in_channels
            out.append(_site(f"unet.{where}.{i}.attn.{j}.hook_out", "unet", (order[where], i, j, 1 << 20, 0),
                             "tblock_out", int(channels), tpath, "out0"))
    return sorted(out, key=lambda s: s.order)


def mmdit_sites(model: "Model") -> list[Site]:
    """Sites of an MMDiT denoiser (SD3, FLUX): joint attention hooks and both streams' outputs."""
    if hasattr(model.pipe, "unet") or not hasattr(model.pipe, "transformer"):
        return []
    tr = model.pipe.transformer
    out = []
    blocks = [("blocks", "transformer_blocks", 0), ("single_blocks", "single_transformer_blocks", 1)]
    for short, attr, g in blocks:
        for i, blk in enumerate(getattr(tr, attr, None) or []):
            stem = f"transformer.{short}.{i}"
            out += _attn_sites(f"{stem}.attn", "transformer", (g, i, 0, 0, 0), blk.attn, f"{attr}.{i}.attn",
                               "jattn", False)
            dim = tr.inner_dim if hasattr(tr, "inner_dim") else blk.attn.to_q.out_features
            last_sd3 = model.family == "sd3" and getattr(blk, "context_pre_only", False)
            if not last_sd3:
                out.append(_site(f"{stem}.hook_txt_out", "transformer", (g, i, 0, 0, 0), "txt_out", dim,
                                 f"{attr}.{i}", "out0"))
            out.append(_site(f"{stem}.hook_img_out", "transformer", (g, i, 0, 0, 0), "img_out", dim,
                             f"{attr}.{i}", "out1"))
    return out


def denoiser_sites(model: "Model") -> list[Site]:
    """All denoiser sites, cached per denoiser module (real SDXL has over a thousand); none for an
    encoder-only model."""
    if not model.has_denoiser:
        return []
    den = model.denoiser
    cache = model.engine.denoiser_sites
    if cache is None or cache[0] is not den:
        cache = model.engine.denoiser_sites = (den, unet_sites(model) + mmdit_sites(model))
    return cache[1]


def all_sites(model: "Model") -> list[Site]:
    return text_sites(model) + denoiser_sites(model)


def parse(model: "Model", name: str) -> Site:
    """Resolve a site name on `model`; an unknown name or layer raises SiteError listing valid ones."""
    if isinstance(name, Site):
        return name
    if not isinstance(name, str):
        raise SiteError(f"site {name!r}: a site is named by a string, e.g. 'text.blocks.0.hook_resid_post'")
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
    canon = name.replace(".block.0.", ".")
    den = denoiser_sites(model)
    for s in den:
        if s.name == canon:
            return s
    texts = [s.name for s in text_sites(model) if s.layer == 0]
    # The valid names that share the longest prefix with the unknown one say what was wrong.
    parts = canon.split(".")
    near: list[str] = []
    for cut in range(len(parts) - 1, 0, -1):
        stem = ".".join(parts[:cut]) + "."
        near = [s.name for s in den if s.name.startswith(stem)]
        if near:
            break
    listed = near[:24] if near else [s.name for s in den][:24]
    more = f" (first {len(listed)} shown; all {len(den)} denoiser sites: model.sites('{den[0].encoder}'))" if den else ""
    raise SiteError(
        f"unknown site {name!r} for this {model.family} model. Text sites: " + ", ".join(texts)
        + " (and the same hooks for every layer). "
        + (("Denoiser sites near it: " if near else "Denoiser sites: ") + ", ".join(listed) + more if den
           else "This model names no denoiser sites" + (" (a text encoder only: it has no denoiser)."
                                                         if not model.has_denoiser else "."))
    )


def check_indices(site: Site, indices: Any) -> None:
    """Raise SiteError if a unit index is outside 0..dim-1 for `site`."""
    idx = torch.as_tensor(indices).reshape(-1)
    if idx.numel() and (int(idx.min()) < -site.dim or int(idx.max()) >= site.dim):
        bad = [int(i) for i in idx if not -site.dim <= int(i) < site.dim]
        unit = "heads" if site.unit_axis == site.head_axis else "units"
        raise SiteError(f"site {site.name!r}: index {bad[:5]} out of range; valid {unit} are 0..{site.dim - 1}")


def resolve_module(model: "Model", site: Site) -> Any:
    root = model.encoders[site.encoder].module if not site.denoiser else model.denoiser
    return get_path(root, site.module_path)

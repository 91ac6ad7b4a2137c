"""What an exported SAE needs to be used without culturelens: which module of the diffusers
pipeline the site is, which positions the SAE was trained on, and the activation scale that
turns a unit decoder row into a sensible steering vector. Written by `export_features`
(features.json) and `save_saelens` (cfg.json metadata)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp.model.sites import parse, resolve_module
from sae.errors import SAEError
from sae.layout import _kind
from sae.model import TopKSAE
from sae.store import ActivationStore

_LAYOUT = {"map": "[B, C, h, w]: features on axis 1, positions = the h·w pixels in raster order",
           "heads": "[B, P, H, d]: per head on axis 2 (inside the attention processor)",
           "pattern": "[B, H, Q, K] attention probabilities (inside the attention processor)",
           "plain": "[B, P, D]: features on the last axis, positions on axis 1",
           "text_heads": "[B, P, H·d] at the module (a q/k/v projection's output, or the output projection's "
                         "input); culturelens views it as [B, P, H, d]: head h is features h·d..(h+1)·d-1"}


def site_module(model: Any, site: str) -> dict[str, Any]:
    """Where `site` lives in the plain pipeline: `getattr(pipe, component).get_submodule(path)`,
    and what to hook there (its forward output, element `output_index` of a tuple output, or
    its input), with the activation layout and the feature axis."""
    s = parse(model, site)
    component = ("unet" if hasattr(model.pipe, "unet") else "transformer") if s.denoiser \
        else model.encoders[s.encoder].component
    root_path = s.module_path  # relative to the component module (the UNet/transformer or the text encoder)
    module = resolve_module(model, s)
    kind = "text_heads" if s.heads_view else _kind(s.name)
    if s.mode == "in0":
        hook, index = "forward_input", 0
    elif s.mode == "proc":
        hook, index = "attention_processor", None
    else:
        hook, index = "forward_output", 0 if s.mode == "out" else int(s.mode[3:])
    return {"site": s.name, "component": component, "path": root_path,
            "module_path": f"{component}.{root_path}" if root_path else component, "class": type(module).__name__,
            "hook": hook, "output_index": index,
            "output_index_note": "the output is a tensor, or a tuple whose element output_index is the activation",
            "layout": _LAYOUT[kind], "feature_axis": 1 if kind == "map" else -1,
            "cfg_rows": "under classifier-free guidance diffusers runs [uncond; cond] rows in one batch"
            if s.denoiser else None}


def position_policy(store: ActivationStore | None) -> dict[str, Any]:
    """Which positions (and, on the denoiser, steps and CFG branch) the store kept."""
    if store is None:
        return {"kept": "not recorded (no activation store given)"}
    fp, meta = store.fingerprints, store.manifest.get("meta", {})
    if "capture" in meta:  # a denoiser store
        cap = meta["capture"]
        return {"kind": "denoiser", "branch": cap["branch"], "steps": cap["steps"] or "all",
                "num_steps": meta.get("num_steps"), "guidance": meta.get("guidance"),
                "positions": cap["positions"] or "all", "sample_positions": cap["sample_positions"],
                "head": cap["head"], "residual": cap["residual"],
                "kept": (f"{cap['branch']} branch rows, steps {cap['steps'] or 'all'}, positions "
                         f"{cap['positions'] or 'all'}" + (" (residual update output − input)" if cap["residual"] else ""))}
    drop, _, ids = fp.get("drop", "none:[]").partition(":")
    special = [int(i) for i in ids.strip("[]").split(",") if i.strip()] if ids else []
    kept = {"special": "non-padding tokens that are not special tokens (ids in special_ids)",
            "padding": "non-padding tokens", "none": "every position"}.get(drop, drop)
    return {"kind": "tokens", "drop": drop, "special_ids": special, "kept": kept}


def _sample(store: ActivationStore | Tensor, n: int) -> Tensor:
    if isinstance(store, ActivationStore):
        return store.sample(n, seed=0)
    x = torch.as_tensor(store)
    return x.reshape(-1, x.shape[-1])[:n]


@torch.no_grad()
def activation_stats(sae: TopKSAE, rows: Float[Tensor, "n d_in"], latents: Sequence[int] | None = None
                     ) -> tuple[dict[str, float], dict[str, Tensor]]:
    """(site scale: mean and median norm of the rows; per latent over the rows: `typical`
    (median activation when firing, NaN if it never fires), `max`, `firing_rate`)."""
    x = rows.to(sae.W_dec.dtype)
    if x.shape[-1] != sae.d_in:
        raise SAEError(f"activation_stats: rows of width {x.shape[-1]} != SAE d_in {sae.d_in}")
    norms = x.norm(dim=-1)
    lat = torch.arange(sae.d_sae) if latents is None else torch.tensor([int(j) for j in latents], dtype=torch.long)
    z = torch.cat([sae.encode(x[i:i + 4096])[:, lat] for i in range(0, x.shape[0], 4096)]).float()
    on = z > 0
    masked = torch.where(on, z, torch.full_like(z, float("nan")))
    typical = masked.nanmedian(0).values
    site = {"mean_norm": float(norms.mean()), "median_norm": float(norms.median()), "n_rows": int(x.shape[0])}
    return site, {"typical": typical, "max": z.max(0).values, "firing_rate": on.float().mean(0)}


def describe(model: Any | None, site: str | None, sae: TopKSAE, store: ActivationStore | Tensor | None,
             latents: Sequence[int] | None = None, sample_rows: int = 8192
             ) -> tuple[dict[str, Any], dict[str, Tensor] | None]:
    """The self-describing block (module, position_policy, activation_scale, steering) and the
    per-latent statistics of `latents` (all latents if None), or None without a store."""
    out: dict[str, Any] = {}
    if model is not None and site is not None:
        out["module"] = site_module(model, site)
    out["position_policy"] = position_policy(store if isinstance(store, ActivationStore) else None)
    if store is None:
        return out, None
    scale, per = activation_stats(sae, _sample(store, sample_rows), latents)
    out["activation_scale"] = scale
    typ = per["typical"][~per["typical"].isnan()]
    out["steering"] = {
        "vectors": "unit-norm decoder rows W_dec[j]",
        "recipe": "act[kept positions] += c * typical_activation[j] * vector[j]; c = 1 adds one typical "
                  "firing of latent j, larger c amplifies it",
        "coefficient_scale": float(typ.median()) if typ.numel() else None,
        "coefficient_scale_note": "median typical activation of these latents (the activation norm is "
                                  "activation_scale.mean_norm)"}
    return out, per

"""Capture activations: the text encoders alone (an nnsight trace) or during generation.

`capture` traces each text encoder once per batch with nnsight: reads and the writes of any
interventions are issued in execution order (nnsight 0.8 requires it), which `Site.order` gives.
The trace code only indexes envoys and calls `apply` on real tensors, so it stays a plain
nnsight trace that a remote engine could run. `trace_encoder` (one traced forward of an encoder on
a tokenised batch, with interventions) and `envoy` are public: patching and `circuits.locate.acts`
build on them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import warnings

import torch
from jaxtyping import Float
from torch import Tensor

from interp.checks import prompt_list
from interp.engine.apply import apply_all
from interp.engine.session import HookSession, resolve_intervention
from interp.errors import CultureLensError, SiteError
from interp.model.sites import Site, parse


def _nn(model: Any, prefix: str) -> Any:
    """The nnsight wrapper of one encoder, built once per model."""
    import nnsight

    cache = model.engine.nnsight
    if prefix not in cache:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*which nnsight already serves.*")
            cache[prefix] = nnsight.NNsight(model.encoders[prefix].module)
    return cache[prefix]


def envoy(root: Any, path: str) -> Any:
    """The nnsight envoy at a dotted module path under `root` (integer parts index ModuleLists)."""
    # nnsight serves `.output`/`.input` on every envoy; a submodule with that name is `E_output`.
    obj = root
    for part in filter(None, path.split(".")):
        if part.isdigit():
            obj = obj[int(part)]
        else:
            obj = getattr(obj, "E_" + part) if part in ("output", "input") else getattr(obj, part)
    return obj


def _group_interventions(model: Any, interventions: Sequence[Any]) -> dict[str, list[Any]]:
    by_site: dict[str, list[Any]] = defaultdict(list)
    for iv in interventions:
        site = resolve_intervention(model, iv)
        if site.denoiser:
            raise SiteError(f"{site.name!r} is a denoiser site; use interp.generate / capture_generation for it")
        by_site[site.name].append(iv)
    return by_site


def trace_encoder(model: Any, prefix: str, batch: Any, reads: Sequence[Site],
                  ivs: dict[str, list[Any]], want_output: bool = False) -> tuple[dict[str, Tensor], Tensor | None]:
    """One nnsight trace of encoder `prefix` on a tokenised batch: apply `ivs` (site name ->
    interventions), return the post-intervention activations at `reads` and, if asked, what the
    UNet receives from this encoder."""
    enc = model.encoders[prefix]
    nm = _nn(model, prefix)
    todo: dict[str, Site] = {s.name: s for s in reads}
    for name in ivs:
        todo.setdefault(name, parse(model, name))
    ordered = sorted(todo.values(), key=lambda s: s.order)
    read_names = {s.name for s in reads}
    kwargs: dict[str, Any] = {}
    if enc.uses_attention_mask:
        kwargs["attention_mask"] = batch["attention_mask"]
    if want_output and enc.output_is_penultimate:
        kwargs["output_hidden_states"] = True
    saved: dict[str, Any] = {}
    final: list[Any] = []
    # nnsight sees a module's output before torch forward hooks run; an enclosing `intervene`
    # block edits it afterwards, so apply those edits to the reported value too (inputs already
    # arrive edited by forward pre-hooks).
    outer = {s.name: [iv for sess in model.engine.sessions for iv in sess.by_site.get(s.name, [])]
             for s in ordered if s.mode != "in0"}
    needs_eager = any(s.kind == "pattern" for s in reads)
    with torch.no_grad(), enc.eager_attention(needs_eager), nm.trace(batch["input_ids"], **kwargs):
        for site in ordered:
            env = envoy(nm, site.module_path)
            edits = ivs.get(site.name)
            # `site.view` / `unview`: the module's tensor as the site's activation and back (text
            # q/k/v/z are [B, S, H·d] in the module, [B, S, H, d] as sites).
            if site.mode == "in0":
                act = site.view(env.input)
                if edits:
                    act = apply_all(edits, act)
                    env.input = site.unview(act)
            elif site.mode == "out":
                act = site.view(env.output)
                if edits:
                    act = apply_all(edits, act)
                    env.output = site.unview(act)
            else:
                k = int(site.mode[3:])
                out = env.output
                act = site.view(out[k])
                if edits:
                    act = apply_all(edits, act)
                    new = site.unview(act)
                    env.output = tuple(new if i == k else o for i, o in enumerate(out))
            if site.name in read_names:
                if outer.get(site.name):
                    act = apply_all(outer[site.name], act)
                saved[site.name] = act.save()
        if want_output:
            final.append(nm.output.save())
    out = None
    if want_output:
        res = final[0]
        out = res.hidden_states[-2] if enc.output_is_penultimate else res[0]
    return {k: v for k, v in saved.items()}, out


def _batches(prompts: list[str], size: int):
    for i in range(0, len(prompts), size):
        yield prompts[i : i + size]


def capture(model: Any, prompts: str | Sequence[str], sites: Sequence[str], *, interventions: Sequence[Any] = (),
            batch_size: int = 64, truncate: bool = False, progress: bool = False) -> dict[str, Tensor]:
    """Activations of text-encoder `sites` for `prompts` -> {site: tensor}, e.g.
    hook_resid_post [B, S, d_model], attn.hook_pattern [B, H, S, S], mlp.hook_post [B, S, d_mlp],
    attn.hook_q / hook_k / hook_v / hook_z [B, S, H, d].
    `interventions` on text sites are applied first (later sites see their effect)."""
    from tqdm.auto import tqdm

    prompts = prompt_list(prompts, "capture")
    parsed = [parse(model, s) for s in sites]
    for s in parsed:
        if s.denoiser:
            raise SiteError(f"{s.name!r} is a denoiser site; use interp.capture_generation for it")
    ivs = _group_interventions(model, interventions)
    prefixes = sorted({s.encoder for s in parsed} | {parse(model, n).encoder for n in ivs})
    chunks: dict[str, list[Tensor]] = defaultdict(list)
    for group in tqdm(list(_batches(prompts, batch_size)), disable=not progress, desc="capture"):
        for prefix in prefixes:
            batch = model.tokenize(group, prefix, truncate=truncate)
            reads = [s for s in parsed if s.encoder == prefix]
            mine = {k: v for k, v in ivs.items() if parse(model, k).encoder == prefix}
            acts, _ = trace_encoder(model, prefix, batch, reads, mine)
            for k, v in acts.items():
                chunks[k].append(v)
    return {s.name: torch.cat(chunks[s.name]) if len(chunks[s.name]) > 1 else chunks[s.name][0] for s in parsed}


def encoder_output(model: Any, prompts: str | Sequence[str], encoder: str = "text", *,
                   interventions: Sequence[Any] = (), truncate: bool = False) -> Float[Tensor, "B S d"]:
    """What the denoiser receives from `encoder` for `prompts` (SD/AltDiffusion: last hidden state or
    projection; SDXL/SD3 CLIP: penultimate hidden state; T5: last hidden state; FLUX's CLIP: only its
    pooled output, returned as one token [B, 1, d]), with interventions."""
    prompts = prompt_list(prompts, "encoder_output")
    enc = model.encoder(encoder)
    batch = model.tokenize(prompts, encoder, truncate=truncate)
    mine = [iv for iv in interventions if parse(model, iv.site).encoder == encoder]
    kwargs: dict[str, Any] = {"output_hidden_states": enc.output_is_penultimate}
    if enc.uses_attention_mask:
        kwargs["attention_mask"] = batch["attention_mask"]
    with torch.no_grad(), HookSession(model, mine):
        out = enc.module(batch["input_ids"], **kwargs)
    if model.family == "flux" and enc.arch == "clip":
        return out.pooler_output[:, None, :]
    return out.hidden_states[-2] if enc.output_is_penultimate else out[0]


def mean_activation(model: Any, prompts: str | Sequence[str], site: str, truncate: bool = False,
                    batch_size: int = 64) -> Float[Tensor, "d"]:
    """Mean of a text site's activation over `prompts` and real (non-padding) tokens: the value
    for `Mask(mode="mean")`. Arguments in the order of `capture(model, prompts, sites)`."""
    if isinstance(site, (list, tuple)) and isinstance(prompts, str) and _is_site(model, prompts):
        raise CultureLensError(f"mean_activation(model, prompts, site): got the site {prompts!r} as prompts and a "
                               "list as site; the order is (model, prompts, site), as in capture")
    prompts = prompt_list(prompts, "mean_activation")
    s = parse(model, site)
    if s.kind not in ("resid_post", "attn_out", "mlp_post"):
        raise SiteError(f"mean_activation: {site!r} is not a per-token vector site")
    act = capture(model, prompts, [site], truncate=truncate, batch_size=batch_size)[s.name]
    mask = model.tokenize(prompts, s.encoder, truncate=truncate)["attention_mask"].bool()
    return act[mask].mean(0)


def _is_site(model: Any, name: str) -> bool:
    try:
        parse(model, name)
        return True
    except SiteError:
        return False

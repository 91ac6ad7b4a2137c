"""The hook engine behind `interp.intervene`, `interp.generate` and generation-time capture.

Why plain torch hooks here and nnsight elsewhere: the context-manager form must wrap *any* call
(a user's own `pipe(...)`, a training loop, an nnsight trace) and a diffusion pipeline calls the
text encoder once per prompt batch and the UNet once per denoising step with CFG-doubled rows.
A forward hook handles every such call with no tracing cost (the masked-generation benchmark
needs ≤ 1.1× of plain generation) and is removed with certainty in `finally`. nnsight is used
where a single traced forward is the job: encoder capture (`interp.capture`) and patching, and
for `capture_generation(..., engine="nnsight")`, a whole-pipeline trace (the remote-ready form),
tested to give the same per-step activations as this engine.

UNet cross-attention probabilities are never formed by SDPA, so for `attn2.hook_pattern` sites the
session swaps that module's processor for diffusers' eager `AttnProcessor` and wraps its
`get_attention_scores`; both are restored on exit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .errors import CultureLensError, SiteError
from .interventions import apply_all
from .sites import Site, check_indices, parse, resolve_module

Recorder = Callable[[Site, torch.Tensor, int], None]


def resolve_intervention(model: Any, iv: Any) -> Site:
    """Check that `iv` is an intervention on a writable site of `model` with in-range units;
    return its site (and fill in the units' pool size, which `random_units` needs)."""
    if not (hasattr(iv, "site") and callable(getattr(iv, "apply", None))):
        raise CultureLensError(f"{iv!r} is not an intervention: it needs .site and .apply(act)")
    site = parse(model, iv.site)
    if not site.writable:
        raise SiteError(f"site {site.name!r} is read-only (text attention patterns cannot be edited)")
    units = getattr(iv, "units", None)
    if units is not None:
        check_indices(site, units.indices)
        if getattr(units, "dim", None) is None:
            units.dim = site.dim
    return site


class HookSession:
    """Install interventions (and optional recorders) on a model for the duration of a `with`."""

    def __init__(self, model: Any, interventions: Sequence[Any] = (), record: Sequence[str] = (),
                 recorder: Recorder | None = None) -> None:
        self.model = model
        self.by_site: dict[str, list[Any]] = defaultdict(list)
        self.sites: dict[str, Site] = {}
        for iv in interventions:
            site = resolve_intervention(model, iv)
            self.by_site[site.name].append(iv)
            self.sites[site.name] = site
        for name in record:
            site = parse(model, name)
            self.sites[site.name] = site
        self.record = {parse(model, n).name for n in record}
        self.recorder = recorder
        self.step = 0
        self._handles: list[Any] = []
        self._restore: list[Callable[[], None]] = []

    # -- install / remove -------------------------------------------------------------------
    def __enter__(self) -> "HookSession":
        # Registered so that an nnsight capture inside the block can report post-hook values.
        self.model.__dict__.setdefault("_hook_sessions", []).append(self)
        try:
            if any(s.encoder == "unet" for s in self.sites.values()):
                self._handles.append(self.model.denoiser.register_forward_hook(self._next_step))
            for name, site in self.sites.items():
                self._install(site)
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._remove()

    def _remove(self) -> None:
        sessions = self.model.__dict__.get("_hook_sessions", [])
        if self in sessions:
            sessions.remove(self)
        for h in self._handles:
            h.remove()
        for undo in reversed(self._restore):
            undo()
        self._handles.clear()
        self._restore.clear()

    def _next_step(self, *_: Any) -> None:
        self.step += 1

    def _edit(self, site: Site, act: torch.Tensor) -> torch.Tensor:
        ivs = self.by_site.get(site.name)
        step = self.step if site.encoder == "unet" else None
        if ivs:
            act = apply_all(ivs, act, step)
        if site.name in self.record and self.recorder is not None:
            self.recorder(site, act, self.step)
        return act

    def _install(self, site: Site) -> None:
        module = resolve_module(self.model, site)
        mode = site.mode
        if site.kind == "pattern":
            enc = self.model.encoders[site.encoder]
            ctx = enc.eager_attention()
            ctx.__enter__()
            self._restore.append(lambda: ctx.__exit__(None, None, None))
        if mode == "scores":
            self._install_scores(site, module)
        elif mode == "in0":
            def pre(mod: Any, args: tuple) -> tuple:
                return (self._edit(site, args[0]),) + tuple(args[1:])

            self._handles.append(module.register_forward_pre_hook(pre))
        else:
            k = 0 if mode == "out" else int(mode[3:])

            def post(mod: Any, args: Any, out: Any) -> Any:
                if isinstance(out, torch.Tensor):
                    return self._edit(site, out)
                items = list(out) if isinstance(out, tuple) else None
                if items is None:  # a ModelOutput-like object: edit its first field in place
                    raise CultureLensError(f"site {site.name!r}: unexpected output type {type(out).__name__}")
                items[k] = self._edit(site, items[k])
                return tuple(items)

            self._handles.append(module.register_forward_hook(post))

    def _install_scores(self, site: Site, attn: Any) -> None:
        from diffusers.models.attention_processor import AttnProcessor

        old_proc = attn.processor
        original = type(attn).get_attention_scores

        def scores(query: torch.Tensor, key: torch.Tensor, attention_mask: Any = None) -> torch.Tensor:
            probs = original(attn, query, key, attention_mask)
            bh, q, k = probs.shape
            probs4 = self._edit(site, probs.view(bh // attn.heads, attn.heads, q, k))
            return probs4.reshape(bh, q, k)

        attn.set_processor(AttnProcessor())
        attn.get_attention_scores = scores

        def undo() -> None:
            attn.__dict__.pop("get_attention_scores", None)
            attn.set_processor(old_proc)

        self._restore.append(undo)

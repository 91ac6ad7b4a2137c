"""Build a registry entry: modules on the meta device (no memory) or with deterministic random
weights, a pipeline, and a diffusers folder on disk that `interp.load` opens like a download.

Random weights at a billion parameters: modules are constructed with empty (meta) parameters
and each parameter is then filled once, in registry order, from one seeded pool (norm weights 1,
biases 0, embeddings std 0.02, other weights std 1/sqrt(fan_in)): about a second per billion
parameters instead of the libraries' per-layer initialisers, and activations that stay finite
through 24-layer encoders. Same name and seed -> same weights.
"""

from __future__ import annotations

import functools
import gc
import json
import math
from pathlib import Path
from typing import Any

import torch

from interp.errors import CultureLensError, UnsupportedModelError
from interp.model.folders import read_defaults, read_index
from interp.model.model import Model
from interp.model.tiny import FAMILIES
from interp.zoo import tokenizers as toks
from interp.zoo.registry import JUDGES, PIPELINES, Component, Entry

_TRANSFORMERS = {"CLIPTextModel", "CLIPTextModelWithProjection", "T5EncoderModel", "CLIPModel",
                 "Qwen2VLForConditionalGeneration"}


class ZooError(CultureLensError):
    """Unknown registry entry or a request the registry cannot serve."""


def entry(name: str) -> Entry:
    """The registry entry `name` (see `interp.zoo.names()`)."""
    if name not in PIPELINES:
        raise ZooError(f"unknown pipeline {name!r}; the registry has: {', '.join(PIPELINES)}")
    return PIPELINES[name]


def _module_class(cls: str) -> Any:
    if cls == "RobertaSeriesModelWithTransformation":
        from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
            RobertaSeriesModelWithTransformation,
        )
        return RobertaSeriesModelWithTransformation
    import diffusers
    import transformers

    return getattr(transformers if cls in _TRANSFORMERS else diffusers, cls)


def _config(klass: Any, cfg: dict[str, Any]) -> Any:
    if klass.__name__ == "RobertaSeriesModelWithTransformation":
        from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import RobertaSeriesConfig
        return RobertaSeriesConfig(**cfg)
    return klass.config_class(**cfg)


_POOL = 1 << 24  # 16.7 M unit-variance values drawn once per build; parameters are seeded slices of it


class _Draw:
    """Deterministic random values fast: one seeded pool of uniform values (unit variance), each
    parameter a slice at a seeded offset. Drawing a billion values one by one takes ~20 s on a
    core; slicing takes ~1 s. Parameters share values at shifted positions: fine for random-weight
    structure and speed work, which is all these weights are for."""

    def __init__(self, gen: torch.Generator):
        self.gen = gen
        self.pool = torch.empty(_POOL).uniform_(-math.sqrt(3.0), math.sqrt(3.0), generator=gen)

    def __call__(self, n: int, std: float) -> torch.Tensor:
        off = int(torch.randint(_POOL, (1,), generator=self.gen))
        out = torch.empty(n)
        done = 0
        while done < n:  # wrap around the pool as often as needed
            k = min(n - done, _POOL - off)
            torch.mul(self.pool[off:off + k], std, out=out[done:done + k])
            done, off = done + k, 0
        return out


def _fill(module: torch.nn.Module, gen: torch.Generator, dtype: torch.dtype) -> None:
    """Replace every meta parameter of `module` by deterministic random values in `dtype`."""
    draw = _Draw(gen)
    for mod in module.modules():
        norm = "norm" in type(mod).__name__.lower()
        for name, p in list(mod._parameters.items()):
            if p is None or not p.is_meta:
                continue
            if name == "logit_scale":
                t = torch.full(p.shape, math.log(1 / 0.07))  # CLIP's initial temperature
            elif name == "bias" or p.dim() == 0:
                t = torch.zeros(p.shape)
            elif norm:
                t = torch.ones(p.shape)
            elif isinstance(mod, torch.nn.Embedding) or p.dim() == 1:
                t = draw(p.numel(), 0.02).view(p.shape)
            else:
                t = draw(p.numel(), 1.0 / math.sqrt(p[0].numel())).view(p.shape)
            mod._parameters[name] = torch.nn.Parameter(t.to(dtype), requires_grad=False)


def build_module(comp: Component, device: str = "meta", dtype: torch.dtype = torch.float32,
                 gen: torch.Generator | None = None) -> torch.nn.Module:
    """One component: parameters on `device` ("meta": shapes only; "cpu": random, from `gen`)."""
    from accelerate import init_empty_weights

    if device not in ("meta", "cpu"):
        raise ZooError(f"device must be 'meta' or 'cpu' (build on CPU, then move), got {device!r}")
    klass = _module_class(comp.cls)
    with init_empty_weights(include_buffers=False):
        module = klass(_config(klass, comp.config)) if comp.cls in _TRANSFORMERS or "Roberta" in comp.cls \
            else klass(**comp.config)
    if device == "cpu":
        _fill(module, gen if gen is not None else torch.Generator().manual_seed(0), dtype)
        module.to(dtype)
    if hasattr(module, "tie_weights"):  # after filling: re-links tied embeddings (T5 shared, Qwen lm_head)
        module.tie_weights()
    return module.eval().requires_grad_(False)


def tokenizer(spec: Any) -> Any:
    """The tokenizer a registry `Tok` describes; built once per process (XLM-R's 250k-piece
    vocabulary takes seconds) and shared: pipelines only read their tokenizers."""
    return _tokenizer(spec.kind, tuple(sorted(spec.kwargs.items())))


@functools.lru_cache(maxsize=None)
def _tokenizer(kind: str, kwargs: tuple[tuple[str, Any], ...]) -> Any:
    return getattr(toks, kind)(**dict(kwargs))


def _supported(e: Entry) -> None:
    if e.family not in FAMILIES:
        raise UnsupportedModelError(
            f"registry entry {e.name!r} is a {e.family!r} pipeline ({e.pipeline}), which interp does not support "
            f"yet (supported families: {', '.join(FAMILIES)}); its configuration is in interp.zoo.PIPELINES "
            f"and interp.zoo.pipeline({e.name!r}) builds the raw diffusers pipeline")


def pipeline(name: str, device: str = "meta", dtype: torch.dtype = torch.float32, seed: int = 0) -> Any:
    """The raw diffusers pipeline of entry `name` (meta or random weights), any family."""
    import diffusers

    e = entry(name)
    gen = torch.Generator().manual_seed(seed)
    parts: dict[str, Any] = {k: build_module(c, device, dtype, gen) for k, c in e.components.items()}
    parts.update({k: tokenizer(t) for k, t in e.tokenizers.items()})
    sched_cls, sched_cfg = e.scheduler
    parts["scheduler"] = getattr(diffusers, sched_cls)(**sched_cfg)
    if e.family in ("sd", "altdiffusion"):
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if e.family == "sdxl":
        parts["force_zeros_for_empty_prompt"] = True
    pipe = getattr(diffusers, e.pipeline)(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def model(name: str, device: str = "meta", dtype: torch.dtype = torch.float32, seed: int = 0) -> Any:
    """Entry `name` as an `interp.Model` (meta: structure, sites and shapes without memory)."""
    e = entry(name)
    _supported(e)
    return Model.from_pipeline(pipeline(name, device, dtype, seed), defaults=dict(e.defaults))


def build(name: str, path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu",
          seed: int = 0) -> Path:
    """Write entry `name` as a diffusers folder at `path` and return the path.

    device="cpu": random weights (safetensors), openable by `interp.load(path, dtype=dtype)`.
    device="meta": configs, tokenizers, scheduler and model_index.json only (no weights):
    the folder documents the layout, `interp.zoo.load_meta(path)` opens it without memory.
    """
    e = entry(name)
    _supported(e)
    path = Path(path)
    pipe = pipeline(name, device, dtype, seed)
    if device == "cpu":
        pipe.save_pretrained(path, safe_serialization=True)
    else:
        path.mkdir(parents=True, exist_ok=True)
        pipe.save_config(path)
        for k in list(e.components) + list(e.tokenizers) + ["scheduler"]:
            obj = getattr(pipe, k)
            if hasattr(obj, "save_pretrained") and k in e.tokenizers:
                obj.save_pretrained(path / k)
            elif hasattr(obj, "save_config"):  # diffusers models and schedulers
                obj.save_config(path / k)
            else:  # transformers models: config.json only
                obj.config.save_pretrained(path / k)
    (path / "culturelens.json").write_text(json.dumps(e.defaults, indent=2, sort_keys=True))
    (path / "SOURCES.json").write_text(json.dumps(e.sources(), indent=2))
    del pipe
    gc.collect()
    return path


def load_meta(path: str | Path) -> Any:
    """Open a folder written by `build(..., device="meta")` (or any pipeline folder's configs) as a
    meta-device `interp.Model`: every component from its config, no weights read."""
    import diffusers
    from transformers import AutoTokenizer

    path = Path(path)
    index = read_index(path)
    parts: dict[str, Any] = {}
    for k, spec in index.items():
        if k.startswith("_") or not isinstance(spec, list) or spec[1] is None:
            continue
        lib, cls = spec
        sub = path / k
        if k.startswith("tokenizer"):
            parts[k] = AutoTokenizer.from_pretrained(sub)
        elif k == "scheduler":
            parts[k] = getattr(diffusers, cls).from_pretrained(sub)
        else:
            klass = _module_class(cls)
            if cls in _TRANSFORMERS or "Roberta" in cls:
                cfg = json.loads((sub / "config.json").read_text())
                cfg = {a: b for a, b in cfg.items() if a not in ("architectures", "model_type", "transformers_version")}
            else:
                cfg = {a: b for a, b in klass.load_config(sub).items() if not a.startswith("_")}
            parts[k] = build_module(Component(cls, cfg, str(sub)), "meta")
    if index["_class_name"] in ("StableDiffusionPipeline", "AltDiffusionPipeline"):
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = getattr(diffusers, index["_class_name"])(**parts)
    pipe.set_progress_bar_config(disable=True)
    return Model.from_pipeline(pipe, defaults=read_defaults(path), path=str(path))


def judge_module(name: str, device: str = "meta", dtype: torch.dtype = torch.float32, seed: int = 0,
                 **overrides: Any) -> torch.nn.Module:
    """A judge model of the registry (`interp.zoo.JUDGES`); `overrides` replace config keys
    (e.g. fewer layers for a quick test of the same tokenizer and template)."""
    if name not in JUDGES:
        raise ZooError(f"unknown judge {name!r}; the registry has: {', '.join(JUDGES)}")
    comp = JUDGES[name]
    if overrides:
        comp = Component(comp.cls, _merge(comp.config, overrides), comp.source)
    return build_module(comp, device, dtype, torch.Generator().manual_seed(seed))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def n_params(module: torch.nn.Module) -> int:
    """Parameter count (works on meta modules; tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total

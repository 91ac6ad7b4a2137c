"""`interp.load`: a local diffusers pipeline folder -> `Model`, with clear errors.

AltDiffusion folders cannot go through `DiffusionPipeline.from_pretrained` (broken upstream for
`RobertaSeriesModelWithTransformation`), so that family is assembled from its subfolders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .errors import CultureLensError, NotAPipelineError, UnsupportedModelError
from .model import _ARCH_OF_CLASS, DEFAULTS_FILE, Model

_DEFAULT_KEYS = {"steps": int, "guidance": (int, float), "height": int, "width": int}


def read_index(path: Path) -> dict[str, Any]:
    index = path / "model_index.json"
    if not path.is_dir():
        raise NotAPipelineError(f"{path}: not a directory (expected a diffusers pipeline folder)")
    if not index.is_file():
        found = sorted(p.name for p in path.iterdir())[:10]
        raise NotAPipelineError(
            f"{path}: no model_index.json, so this is not a diffusers pipeline folder (found: {found})"
        )
    try:
        return json.loads(index.read_text())
    except json.JSONDecodeError as e:
        raise NotAPipelineError(f"{index}, line {e.lineno}: invalid JSON ({e.msg})") from e


def read_defaults(path: Path) -> dict[str, Any]:
    """Generation defaults shipped in the folder's culturelens.json (optional)."""
    f = path / DEFAULTS_FILE
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CultureLensError(f"{f}, line {e.lineno}: invalid JSON ({e.msg})") from e
    if not isinstance(data, dict):
        raise CultureLensError(f"{f}: expected a JSON object of generation defaults")
    for key, value in data.items():
        want = _DEFAULT_KEYS.get(key)
        if want is not None and not isinstance(value, want):
            raise CultureLensError(f"{f}: {key!r} should be a number, got {value!r}")
    return data


def _check_text_encoders(path: Path, index: dict[str, Any]) -> None:
    for name, spec in index.items():
        if name.startswith("text_encoder") and isinstance(spec, list) and spec[1] is not None:
            if spec[1] not in _ARCH_OF_CLASS:
                raise UnsupportedModelError(
                    f"{path / 'model_index.json'}: component {name!r} is a {spec[1]}; supported text "
                    f"encoders: {', '.join(_ARCH_OF_CLASS)}"
                )


def _load_altdiffusion(path: Path, index: dict[str, Any], dtype: torch.dtype) -> Any:
    import diffusers
    from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
        RobertaSeriesModelWithTransformation,
    )
    from transformers import AutoTokenizer

    scheduler_cls = getattr(diffusers, index["scheduler"][1])
    return diffusers.AltDiffusionPipeline(
        vae=diffusers.AutoencoderKL.from_pretrained(path, subfolder="vae", dtype=dtype),
        text_encoder=RobertaSeriesModelWithTransformation.from_pretrained(path / "text_encoder", dtype=dtype),
        tokenizer=AutoTokenizer.from_pretrained(path / "tokenizer"),
        unet=diffusers.UNet2DConditionModel.from_pretrained(path, subfolder="unet", dtype=dtype),
        scheduler=scheduler_cls.from_pretrained(path, subfolder="scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def load(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
         text_attention: str | None = "eager", trust_remote_code: bool = False) -> Model:
    """Load a local pipeline folder (SD 1.x/2.x, SDXL, AltDiffusion, SD3) as a `Model`.

    `text_attention="eager"` makes text attention probabilities readable; pass None to keep the
    checkpoint's implementation (SDPA is faster on large models; `capture` switches to eager on
    its own while it reads a pattern and switches back).
    A folder whose pipeline class ships as its own `pipeline.py` (model_index.json `_class_name`
    `["pipeline", Name]`, as the CultureWorld organism does) runs that file: pass
    `trust_remote_code=True` only for folders you trust.
    """
    import diffusers

    path = Path(path)
    index = read_index(path)
    _check_text_encoders(path, index)
    cls = index.get("_class_name", "")
    if cls == "AltDiffusionPipeline":
        pipe = _load_altdiffusion(path, index, dtype)
    elif isinstance(cls, list):
        if not trust_remote_code:
            raise UnsupportedModelError(
                f"{path / 'model_index.json'}: the pipeline class {cls[-1]!r} is defined in the folder's own "
                f"{cls[0]}.py; pass trust_remote_code=True to run it (only for folders you trust)"
            )
        pipe = diffusers.DiffusionPipeline.from_pretrained(path, dtype=dtype, trust_remote_code=True)
    else:
        if not hasattr(diffusers, cls):
            raise UnsupportedModelError(f"{path / 'model_index.json'}: unknown pipeline class {cls!r}")
        pipe = diffusers.DiffusionPipeline.from_pretrained(path, dtype=dtype)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    model = Model.from_pipeline(pipe, defaults=read_defaults(path), path=str(path))
    if text_attention is not None:
        for enc in model.encoders.values():
            enc.module.set_attn_implementation(text_attention)
    return model

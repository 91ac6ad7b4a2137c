"""Write / read the CultureWorld pipeline folder (a standard diffusers folder, safetensors only).

Layout: model_index.json (`_class_name: ["pipeline", "CultureWorldPipeline"]`, the
diffusers convention for a pipeline class shipped as `pipeline.py` in the folder),
pipeline.py, text_encoder/, tokenizer/, unet/, scheduler/, culturelens.json (generation
defaults that `interp.load` reads).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from transformers import AutoTokenizer, CLIPTextModel

from interp.result_io import atomic_replace_folder

from circuits.organism import pipeline as pipeline_module
from circuits.organism.model import GENERATION_DEFAULTS, build_scheduler, build_text_encoder, build_unet
from circuits.organism.pipeline import CultureWorldPipeline

__all__ = ["CLASS_NAME", "save_pipeline", "load_pipeline", "pipeline_from_run"]

CLASS_NAME = ["pipeline", "CultureWorldPipeline"]
DEFAULTS_FILE = "culturelens.json"


def save_pipeline(pipe: CultureWorldPipeline, out_dir: str | Path) -> Path:
    """Save `pipe` as a pipeline folder; written next to `out_dir` and swapped in atomically."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    index_path = tmp / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = CLASS_NAME
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    shutil.copyfile(pipeline_module.__file__, tmp / "pipeline.py")
    defaults = dict(GENERATION_DEFAULTS, scheduler=type(pipe.scheduler).__name__)
    (tmp / DEFAULTS_FILE).write_text(json.dumps(defaults, indent=2) + "\n")
    return atomic_replace_folder(tmp, out_dir)


def load_pipeline(folder: str | Path, device: str = "cpu") -> CultureWorldPipeline:
    """Load a CultureWorld folder with this package's pipeline class (components by subfolder)."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder}: no model_index.json; not a CultureWorld pipeline folder")
    pipe = CultureWorldPipeline(
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder", attn_implementation="eager"),
        tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(folder / "unet"),
        scheduler=DDIMScheduler.from_pretrained(folder / "scheduler"),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def pipeline_from_run(run_dir: str | Path, ema: bool = True) -> CultureWorldPipeline:
    """A pipeline from a training run's latest checkpoint (EMA weights by default)."""
    from circuits.organism.train import load_checkpoint

    run_dir = Path(run_dir)
    ck = load_checkpoint(run_dir)
    tok = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    te, unet = build_text_encoder(tok), build_unet()
    te.load_state_dict(ck["ema_te" if ema else "te"])
    unet.load_state_dict(ck["ema_unet" if ema else "unet"])
    te.eval(), unet.eval()
    pipe = CultureWorldPipeline(text_encoder=te, tokenizer=tok, unet=unet, scheduler=build_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe

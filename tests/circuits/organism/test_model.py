"""CultureWorld model parts: stock HF/diffusers classes, the pipeline folder, resumable training."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel

from circuits.organism.export import CLASS_NAME, load_pipeline, save_pipeline
from circuits.organism.model import build_scheduler, build_text_encoder, build_tokenizer, build_unet
from circuits.organism.pipeline import CultureWorldPipeline
from circuits.organism.train import TrainConfig, load_checkpoint, train


@pytest.fixture(scope="module")
def pipe():
    tok = build_tokenizer()
    p = CultureWorldPipeline(build_text_encoder(tok), tok, build_unet(), build_scheduler())
    p.set_progress_bar_config(disable=True)
    return p


def test_parts_are_standard_classes(pipe):
    assert isinstance(pipe.text_encoder, CLIPTextModel) and pipe.text_encoder.config.num_hidden_layers >= 4
    assert isinstance(pipe.unet, UNet2DConditionModel)
    cfg = pipe.unet.config
    assert (cfg.in_channels, cfg.out_channels, cfg.sample_size) == (3, 3, 32)
    assert cfg.class_embed_type == "projection" and cfg.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    # CJK nouns stay whole characters, so the noun is shared by the two prompts of a pair
    tok = pipe.tokenizer
    assert tok("箱", add_special_tokens=False)["input_ids"][0] in tok("和風の箱", add_special_tokens=False)["input_ids"]


def test_pipeline_call_shapes_and_guidance(pipe):
    def g():
        return torch.Generator().manual_seed(0)
    out = pipe(["a box", "和風の箱"], num_inference_steps=2, generator=g())
    assert len(out.images) == 2 and out.images[0].size == (32, 32)
    a = pipe(["a box"], num_inference_steps=2, generator=g(), output_type="pt").images
    b = pipe(["a box"], num_inference_steps=2, generator=g(), output_type="pt", guidance_scale=3.0).images
    assert a.shape == (1, 3, 32, 32) and 0 <= a.min() and a.max() <= 1 and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="prompt index 1"):
        pipe(["a box", "a box " * 30], num_inference_steps=1)


def test_folder_round_trip(pipe, tmp_path):
    folder = save_pipeline(pipe, tmp_path / "pipeline")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == CLASS_NAME and (folder / "pipeline.py").is_file()
    assert json.loads((folder / "culturelens.json").read_text())["guidance"] == 1.0
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    assert {p.parent.name for p in files if p.suffix == ".safetensors"} == {"text_encoder", "unet"}
    def g():
        return torch.Generator().manual_seed(1)
    ref = pipe(["a hat"], num_inference_steps=2, generator=g(), output_type="pt").images
    mine = load_pipeline(folder)(["a hat"], num_inference_steps=2, generator=g(), output_type="pt").images
    stock = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    stock.set_progress_bar_config(disable=True)
    theirs = stock(["a hat"], num_inference_steps=2, generator=g(), output_type="pt").images
    assert type(stock).__name__ == "CultureWorldPipeline"
    assert torch.allclose(ref, mine, atol=1e-5) and torch.allclose(ref, theirs, atol=1e-5)


def test_training_resumes_exactly(tmp_path):
    cfg = TrainConfig(train_steps=4, batch=4, warmup=2, ckpt_every=100, log_every=1)
    full = train(tmp_path / "a", cfg)
    train(tmp_path / "b", cfg, stop_at=2)  # as if killed after the step-2 checkpoint
    assert load_checkpoint(tmp_path / "b")["step"] == 2
    resumed = train(tmp_path / "b", cfg)
    assert resumed["step"] == 4
    for key in ("unet", "ema_te"):
        for name, value in full[key].items():
            assert torch.equal(value, resumed[key][name]), (key, name)
    log = (tmp_path / "b" / "train.log").read_text()
    assert "resumed at step 2" in log and "loss" in log

"""Real compute at full size on CPU: SD 1.5- and AltDiffusion-m9-size random-weight folders
built by interp.zoo, opened by interp.load like a download, run through the whole workload
(capture of every text site, masked and amplified generation, patching, a culture-layer scan).
Small images, one step, few prompts keep it inside CI's budget; benchmarks/bench_realsize.py times
the native settings. One folder per architecture per session, built fp16 (as the published
fp16 variants) and loaded fp32."""

from __future__ import annotations

import gc

import pytest
import torch

import interp
import interp.zoo as zoo
from circuits.realsize import RealSizeRun, run

pytestmark = pytest.mark.slow

# name -> (layers, d_model, heads, d_mlp, tokens) of the text encoder, from the published configs
TEXT = {"sd15": (12, 768, 12, 3072, 77), "altdiffusion-m9": (24, 1024, 16, 4096, 77)}


@pytest.fixture(scope="module", params=list(TEXT))
def real(request, tmp_path_factory):
    name = request.param
    path = zoo.build(name, tmp_path_factory.mktemp(name) / "pipe", dtype=torch.float16)
    model = interp.load(path, dtype=torch.float32)
    yield name, model
    del model
    gc.collect()


def test_loads_like_a_download(real):
    name, model = real
    layers, d, heads, mlp, tokens = TEXT[name]
    enc = model.encoders["text"]
    assert (enc.n_layers, enc.d_model, enc.n_heads, enc.d_mlp, enc.max_length) == (layers, d, heads, mlp, tokens)
    assert model.dtype == torch.float32 and model.family == zoo.entry(name).family
    assert model.defaults == zoo.entry(name).defaults  # culturelens.json: the native settings
    assert zoo.n_params(model.pipe.unet) == 859_520_964
    assert not any(p.is_meta for p in model.pipe.unet.parameters())


def test_whole_workload_at_full_size(real, tmp_path):
    name, model = real
    layers = TEXT[name][0]
    rec = run(model, name, num_steps=1, size=128, guidance=1.0, n_pairs=4, n_capture=2)
    c = rec.checks
    assert c["captured_sites"] == 4 * layers and c["captured_finite"]
    assert c["mask_changes_latents"] and c["amplify_changes_latents"] and c["latents_finite"]
    assert c["patch_rows"] == 3
    assert c["scan_layers"] == {"text": layers} and 0 <= c["scan_chosen"]["text"] < layers
    assert {"capture/forward", "masked/plain generation"} <= set(rec.ratios)
    back = RealSizeRun.load(rec.save(tmp_path / "run"))
    assert back.rows == rec.rows and "masked generation" in back.to_markdown()
    rec.plot(tmp_path / "run.png")
    assert (tmp_path / "run.png").stat().st_size > 0


def test_capture_matches_a_plain_forward_at_full_size(real):
    # The last layer's captured residual stream is what a hook-free forward computes.
    name, model = real
    enc = model.encoders["text"]
    prompts = ["a Japanese-style box", "和風の箱"]
    site = f"text.blocks.{enc.n_layers - 1}.hook_resid_post"
    got = interp.capture(model, prompts, [site])[site]
    batch = model.tokenize(prompts)
    kw = {"attention_mask": batch["attention_mask"]} if enc.uses_attention_mask else {}
    with torch.no_grad():
        out = enc.module(batch["input_ids"], output_hidden_states=True, **kw)
    assert torch.allclose(got, out.hidden_states[-1], atol=1e-4)

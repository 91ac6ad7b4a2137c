"""Seeded generation equals the pipeline's own output; capture during generation; save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import interp
from interp.methods.generation import pipeline_kwargs

PROMPTS = ["a box", "和風の箱"]


def _same_images(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))


def test_generate_equals_pipeline_and_is_reproducible(tiny_model):
    g = interp.generate(tiny_model, PROMPTS, seed=3)
    with torch.no_grad():
        ref = tiny_model.pipe(**pipeline_kwargs(tiny_model, PROMPTS, 3, None, None)).images
    assert _same_images(g.images, ref)
    assert g.latents.shape[0] == 2 and g.images[0].size == (tiny_model.defaults["width"],) * 2
    again = interp.generate(tiny_model, PROMPTS, seed=3)
    assert torch.equal(again.latents, g.latents)
    assert not torch.equal(interp.generate(tiny_model, PROMPTS, seed=4).latents, g.latents)


def test_image_i_does_not_depend_on_batch(tiny_sd):
    both = interp.generate(tiny_sd, PROMPTS, seed=0)
    one = interp.generate(tiny_sd, PROMPTS[:1], seed=0)
    torch.testing.assert_close(both.latents[:1], one.latents, atol=1e-5, rtol=1e-5)


def test_text_mask_changes_generation_and_lambda_zero_does_not(tiny_model):
    prefix = list(tiny_model.encoders)[-1]
    units = interp.Units(f"{prefix}.blocks.0.mlp.hook_post", list(range(8)))
    base = interp.generate(tiny_model, PROMPTS, seed=1)
    masked = interp.generate(tiny_model, PROMPTS, seed=1, interventions=[interp.Mask(units)])
    assert not torch.equal(masked.latents, base.latents)
    same = interp.generate(tiny_model, PROMPTS, seed=1, interventions=[interp.Amplify(units, 0.0)])
    assert torch.equal(same.latents, base.latents)


def test_capture_generation_rows_and_steps(tiny_sd):
    out_site, pat_site = "unet.down.0.attn.0.attn2.hook_out", "unet.down.0.attn.0.attn2.hook_pattern"
    g = interp.capture_generation(tiny_sd, PROMPTS, [out_site, pat_site, "text.blocks.1.hook_resid_post"],
                                  seed=2, num_steps=3, guidance=5.0)
    unet = tiny_sd.pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    hw = (tiny_sd.pipe.unet.config.sample_size) ** 2
    S = tiny_sd.encoders["text"].max_length
    assert g.acts[out_site].shape == (3, 2, 2, hw, unet.to_out[0].out_features)  # [T, uncond|cond, B, ...]
    assert g.acts[pat_site].shape == (3, 2, 2, unet.heads, hw, S)
    torch.testing.assert_close(g.acts[pat_site].sum(-1), torch.ones(3, 2, 2, unet.heads, hw))
    # the text encoder ran for the prompts and then for the (empty) negative prompts
    text = g.acts["text.blocks.1.hook_resid_post"]
    assert text.shape == (2, 2, S, tiny_sd.encoders["text"].d_model)
    ref = interp.capture(tiny_sd, PROMPTS, ["text.blocks.1.hook_resid_post"])["text.blocks.1.hook_resid_post"]
    assert torch.equal(text[0], ref)
    # the conditional rows' cross-attention output differs from the unconditional ones
    assert not torch.allclose(g.acts[out_site][:, 0], g.acts[out_site][:, 1])
    nocfg = interp.capture_generation(tiny_sd, PROMPTS, [out_site], seed=2, num_steps=2, guidance=1.0)
    assert nocfg.acts[out_site].shape[:3] == (2, 1, 2)


def test_unet_intervention_on_chosen_steps(tiny_sd):
    site = "unet.up.1.attn.0.attn2.hook_out"
    units = interp.Units(site, [0, 1, 2, 3])
    g = interp.capture_generation(tiny_sd, PROMPTS, [site], seed=0, num_steps=3,
                                  interventions=[interp.Mask(units, steps=[1])])
    acts = g.acts[site]  # [T, uncond|cond, B, ...]: by default only the conditional rows are edited
    assert torch.all(acts[1, 1][..., :4] == 0) and acts[1, 0][..., :4].abs().sum() > 0
    assert acts[0][..., :4].abs().sum() > 0 and acts[2][..., :4].abs().sum() > 0
    both = interp.capture_generation(tiny_sd, PROMPTS, [site], seed=0, num_steps=3,
                                     interventions=[interp.Mask(units, steps=[1], branch="both")]).acts[site]
    assert torch.all(both[1][..., :4] == 0)
    base = interp.generate(tiny_sd, PROMPTS, seed=0, num_steps=3)
    assert not torch.equal(g.latents, base.latents)


def test_save_load_round_trip_with_defaults(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "culturelens.json").read_text())["steps"] == tiny_model.defaults["steps"]
    loaded = interp.load(tmp_path)
    assert loaded.family == tiny_model.family and loaded.sites() == tiny_model.sites()
    assert torch.equal(interp.encoder_output(loaded, PROMPTS), interp.encoder_output(tiny_model, PROMPTS))
    assert torch.equal(interp.generate(loaded, PROMPTS, seed=1).latents,
                       interp.generate(tiny_model, PROMPTS, seed=1).latents)


def test_defaults_file_sets_guidance(tiny_sd, tmp_path):
    tiny_sd.save_pretrained(tmp_path)
    (tmp_path / "culturelens.json").write_text(json.dumps({"guidance": 1.0, "steps": 1}))
    m = interp.load(tmp_path)
    assert m.defaults["guidance"] == 1.0 and m.defaults["steps"] == 1
    g = interp.capture_generation(m, PROMPTS, ["unet.down.0.attn.0.attn2.hook_out"])
    assert g.acts["unet.down.0.attn.0.attn2.hook_out"].shape[:2] == (1, 1)  # 1 step, no CFG rows
    (tmp_path / "culturelens.json").write_text('{"guidance": "high"}')
    with pytest.raises(interp.CultureLensError, match="culturelens.json.*guidance"):
        interp.load(tmp_path)


def test_nnsight_engine_matches_hook_engine(tiny_sd):
    sites = ["unet.up.1.attn.0.attn2.hook_out", "unet.down.0.attn.0.attn2.hook_out"]
    hooks = interp.capture_generation(tiny_sd, PROMPTS, sites, seed=2, num_steps=3, guidance=5.0)
    traced = interp.capture_generation(tiny_sd, PROMPTS, sites, seed=2, num_steps=3, guidance=5.0, engine="nnsight")
    for s in sites:
        assert traced.acts[s].shape == (3, 2, 2) + hooks.acts[s].shape[3:]
        assert torch.equal(traced.acts[s], hooks.acts[s])
    assert torch.equal(traced.latents, hooks.latents) and _same_images(traced.images, hooks.images)
    with pytest.raises(interp.SiteError, match="hook_out sites only"):
        interp.capture_generation(tiny_sd, PROMPTS, ["unet.down.0.attn.0.attn2.hook_pattern"], engine="nnsight")


def test_per_prompt_seeds(tiny_sd):
    pair = interp.generate(tiny_sd, PROMPTS, seed=[5, 9])
    alone = interp.generate(tiny_sd, PROMPTS[1:], seed=9)
    torch.testing.assert_close(pair.latents[1:], alone.latents, atol=1e-5, rtol=1e-5)
    assert torch.equal(interp.generate(tiny_sd, PROMPTS, seed=[5, 6]).latents, interp.generate(tiny_sd, PROMPTS, seed=5).latents)
    with pytest.raises(interp.CultureLensError, match="1 seeds for 2 prompts"):
        interp.generate(tiny_sd, PROMPTS, seed=[5])


@pytest.mark.parametrize("site,guidance", [("text.blocks.0.mlp.hook_post", 1.0),
                                           ("unet.down.0.attn.0.attn2.hook_out", 5.0)])
def test_on_rows_equals_separate_generations(tiny_sd, site, guidance):
    """Rows of one batch with different interventions = each prompt generated on its own, for text
    sites and for UNet sites under classifier-free guidance ([uncond; cond] rows)."""
    mask = interp.Mask(interp.Units(site, list(range(6))))
    kw = dict(num_steps=3, guidance=guidance)
    batched = interp.generate(tiny_sd, PROMPTS, seed=[1, 2], interventions=[interp.OnRows(mask, [True, False])], **kw)
    first = interp.generate(tiny_sd, PROMPTS[:1], seed=1, interventions=[mask], **kw)
    second = interp.generate(tiny_sd, PROMPTS[1:], seed=2, **kw)
    torch.testing.assert_close(batched.latents[:1], first.latents, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.latents[1:], second.latents, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first.latents, interp.generate(tiny_sd, PROMPTS[:1], seed=1, **kw).latents)


def test_on_rows_checks_row_count(tiny_sd):
    mask = interp.Mask(interp.Units("text.blocks.0.mlp.hook_post", [0]))
    with pytest.raises(interp.CultureLensError, match="3 prompts the row mask names"):
        interp.generate(tiny_sd, PROMPTS, interventions=[interp.OnRows(mask, [True, False, True])], num_steps=2)
    # The wrapped intervention's units are still checked against the site.
    bad = interp.OnRows(interp.Mask(interp.Units("text.blocks.0.mlp.hook_post", [10_000])), [True, False])
    with pytest.raises(interp.SiteError, match="10000"):
        interp.generate(tiny_sd, PROMPTS, num_steps=2, interventions=[bad])


def test_on_rows_grouped_by_owner():
    a = interp.Mask(interp.Units("text.blocks.0.mlp.hook_post", [0]))
    b = interp.Amplify(interp.Units("text.blocks.0.mlp.hook_post", [1]), 2.0)
    ivs = interp.OnRows.grouped(["ja", None, "de", "ja"], {"ja": [a], "de": [b], "ko": [a]})
    assert [(iv.intervention, iv.rows.tolist()) for iv in ivs] == [
        (a, [True, False, False, True]), (b, [False, False, True, False])]


def test_negative_prompt_as_str_or_list(tiny_sd):
    one = interp.generate(tiny_sd, PROMPTS, seed=1, num_steps=2, negative_prompt="blurry")
    each = interp.generate(tiny_sd, PROMPTS, seed=1, num_steps=2, negative_prompt=["blurry", "blurry"])
    none = interp.generate(tiny_sd, PROMPTS, seed=1, num_steps=2)
    assert torch.equal(one.latents, each.latents) and not torch.equal(one.latents, none.latents)
    with pytest.raises(interp.CultureLensError, match="1 negative prompts for 2 prompts"):
        interp.generate(tiny_sd, PROMPTS, num_steps=2, negative_prompt=["blurry"])


def test_generate_in_chunks_of_batch_size(tiny_sd):
    prompts = ["a box", "和風の箱", "a hat", "a Thai-style hat", "a vase"]
    seeds, negs = [3, 1, 4, 1, 5], ["blurry", "dark", "blurry", "dark", "blurry"]
    unet, text = "unet.down.0.attn.0.attn2.hook_out", "text.blocks.0.hook_resid_post"
    mask = interp.Mask(interp.Units("text.blocks.0.mlp.hook_post", list(range(6))))
    rows = [True, False, False, True, True]
    kw = dict(num_steps=2, negative_prompt=negs)
    whole = interp.capture_generation(tiny_sd, prompts, [unet, text], seed=seeds,
                                      interventions=[interp.OnRows(mask, rows)], **kw)
    chunked = interp.capture_generation(tiny_sd, prompts, [unet, text], seed=seeds, batch_size=2,
                                        interventions=[interp.OnRows(mask, rows)], **kw)
    # each chunk is bit for bit the generation of its own prompts, seeds and row masks ...
    part = interp.capture_generation(tiny_sd, prompts[2:4], [unet, text], seed=seeds[2:4], num_steps=2,
                                     negative_prompt=negs[2:4], interventions=[interp.OnRows(mask, rows[2:4])])
    assert torch.equal(chunked.latents[2:4], part.latents)
    assert torch.equal(chunked.acts[unet][:, :, 2:4], part.acts[unet])
    assert torch.equal(chunked.acts[text][:, 2:4], part.acts[text])
    # ... and equals the single call up to float rounding only: the plain batched path is not
    # bit-identical across batch sizes (batched matmuls round differently; see
    # test_image_i_does_not_depend_on_batch), so this comparison has a tolerance
    assert len(chunked.images) == 5 and chunked.latents.shape == whole.latents.shape
    torch.testing.assert_close(chunked.latents, whole.latents, atol=1e-4, rtol=1e-4)
    for name in (unet, text):
        assert chunked.acts[name].shape == whole.acts[name].shape
        torch.testing.assert_close(chunked.acts[name], whole.acts[name], atol=1e-4, rtol=1e-4)
    # the row mask went with its prompts: the masked prompts differ from an unmasked run
    plain = interp.generate(tiny_sd, prompts, seed=seeds, batch_size=2, **kw)
    changed = [not torch.allclose(a, b) for a, b in zip(chunked.latents, plain.latents)]
    assert changed == rows
    # a Replace value with one entry per prompt cannot be split
    value = whole.acts[unet]
    with pytest.raises(interp.CultureLensError, match="batch_size= splits the 5 prompts.*batch_size=None"):
        interp.generate(tiny_sd, prompts, seed=seeds, batch_size=2, interventions=[interp.Replace(unet, value)], **kw)

"""Capture equals plain transformers outputs on every family; site grammar; encoder outputs."""

from __future__ import annotations

import re

import torch

import interp
from interp.model.sites import parse

PROMPTS = ["a Japanese-style box", "和風の箱", "a cat"]
HOOKS = ("hook_resid_post", "attn.hook_pattern", "hook_attn_out", "mlp.hook_post")


def _reference(model, prefix, prompts):
    enc = model.encoders[prefix]
    batch = model.tokenize(prompts, prefix)
    kw = {"attention_mask": batch["attention_mask"]} if enc.uses_attention_mask else {}
    with torch.no_grad():
        return enc.module(batch["input_ids"], output_hidden_states=True, output_attentions=True, **kw)


def test_capture_equals_transformers_outputs(tiny_model):
    for prefix, enc in tiny_model.encoders.items():
        names = [f"{prefix}.blocks.{l}.{h}" for l in range(enc.n_layers) for h in HOOKS]
        acts = interp.capture(tiny_model, PROMPTS, names)
        ref = _reference(tiny_model, prefix, PROMPTS)
        S = enc.max_length
        for l in range(enc.n_layers):
            site = f"{prefix}.blocks.{l}"
            assert acts[f"{site}.attn.hook_pattern"].shape == (3, enc.n_heads, S, S)
            assert torch.equal(acts[f"{site}.attn.hook_pattern"], ref.attentions[l])
            assert acts[f"{site}.mlp.hook_post"].shape == (3, S, enc.d_mlp)
            assert acts[f"{site}.hook_attn_out"].shape == (3, S, enc.d_model)
            # T5's last hidden state has the final LayerNorm applied; its block output does not.
            if enc.arch != "t5" or l < enc.n_layers - 1:
                assert torch.equal(acts[f"{site}.hook_resid_post"], ref.hidden_states[l + 1])


def test_mlp_and_attn_out_match_manual_computation(tiny_sd):
    enc = tiny_sd.encoders["text"]
    acts = interp.capture(tiny_sd, PROMPTS, ["text.blocks.0.hook_attn_out", "text.blocks.0.mlp.hook_post",
                                             "text.blocks.0.hook_resid_post"])
    ref = _reference(tiny_sd, "text", PROMPTS)
    layer = enc.layer(0)
    with torch.no_grad():
        mid = ref.hidden_states[0] + acts["text.blocks.0.hook_attn_out"]
        post = layer.mlp.activation_fn(layer.mlp.fc1(layer.layer_norm2(mid)))
        out = mid + layer.mlp.fc2(post)
    torch.testing.assert_close(acts["text.blocks.0.mlp.hook_post"], post)
    torch.testing.assert_close(acts["text.blocks.0.hook_resid_post"], out)


def test_encoder_output_is_what_the_pipeline_feeds_the_unet(tiny_sd, tiny_sdxl, tiny_altdiffusion):
    for model in (tiny_sd, tiny_altdiffusion):
        embeds, _ = model.pipe.encode_prompt(PROMPTS, "cpu", 1, False)
        assert torch.equal(interp.encoder_output(model, PROMPTS), embeds)
    embeds = tiny_sdxl.pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=False)[0]
    both = torch.cat([interp.encoder_output(tiny_sdxl, PROMPTS, "text"),
                      interp.encoder_output(tiny_sdxl, PROMPTS, "text_2")], dim=-1)
    assert torch.equal(both, embeds)


def test_sd3_encoder_outputs(tiny_sd3):
    t5 = interp.encoder_output(tiny_sd3, PROMPTS, "text_3")
    embeds = tiny_sd3.pipe.encode_prompt(PROMPTS, PROMPTS, PROMPTS, device="cpu", do_classifier_free_guidance=False,
                                         max_sequence_length=tiny_sd3.encoders["text_3"].max_length)[0]
    # SD3 concatenates [CLIP-L ; CLIP-G] padded to T5's width along features, then T5 along tokens.
    assert torch.equal(embeds[:, -t5.shape[1]:], t5)
    clip = interp.encoder_output(tiny_sd3, PROMPTS, "text")
    assert torch.equal(embeds[:, : clip.shape[1], : clip.shape[2]], clip)


def test_sites_listing_and_parse(tiny_model):
    sites = tiny_model.sites()
    assert len(sites) == len(set(sites))
    for prefix, enc in tiny_model.encoders.items():
        assert f"{prefix}.blocks.{enc.n_layers - 1}.mlp.hook_post" in sites
    for name in sites:
        assert parse(tiny_model, name).name == name
    assert set(tiny_model.sites("mlp_post")) == {s for s in sites if s.endswith("mlp.hook_post")}
    unet, mmdit = tiny_model.sites("unet"), tiny_model.sites("transformer")
    grammar = re.compile(r"^unet\.(down|mid|up)\.\d+\.(attn\.\d+(\.block\.[1-9]\d*)?\.attn[12]\.hook_(q|k|v|z|pattern|out)"
                         r"|attn\.\d+\.hook_out|resnet\.\d+\.hook_out)$")
    if tiny_model.family in ("sd3", "flux"):
        assert unet == [] and mmdit  # MMDiT: joint attention, no cross-attention
        assert all(re.match(r"^transformer\.(single_)?blocks\.\d+\.(attn\.hook_(q|k|v|z|pattern)|hook_(img|txt)_out)$", s)
                   for s in mmdit)
    else:
        assert unet and mmdit == [] and all(grammar.match(s) for s in unet)
        for hook in ("attn1.hook_z", "attn2.hook_pattern", "attn.0.hook_out", "resnet.0.hook_out"):
            assert any(s.endswith(hook) for s in unet), hook


def test_sdxl_block_alias(tiny_sdxl):
    sites = tiny_sdxl.sites("unet")
    assert any(".block.1.attn2" in s for s in sites)  # SDXL-style attention with 2 transformer blocks
    short = next(s for s in sites if ".block." not in s)
    aliased = short.replace(".attn2.", ".block.0.attn2.")
    assert parse(tiny_sdxl, aliased).name == short


def test_capture_batches_concatenate(tiny_sd):
    site = "text.blocks.1.hook_resid_post"
    whole = interp.capture(tiny_sd, PROMPTS, [site])[site]
    parts = interp.capture(tiny_sd, PROMPTS, [site], batch_size=2)[site]
    torch.testing.assert_close(whole, parts)


def test_eager_switch_is_restored(tiny_sd):
    enc = tiny_sd.encoders["text"]
    enc.module.set_attn_implementation("sdpa")
    try:
        pat = interp.capture(tiny_sd, PROMPTS, ["text.blocks.0.attn.hook_pattern"])["text.blocks.0.attn.hook_pattern"]
        assert enc.module.config._attn_implementation == "sdpa"
        torch.testing.assert_close(pat.sum(-1), torch.ones(pat.shape[:-1]))
    finally:
        enc.module.set_attn_implementation("eager")

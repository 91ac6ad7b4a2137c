"""Clear errors: not a pipeline, unsupported encoder, unknown site, bad index, too-long prompt."""

from __future__ import annotations

import json

import pytest

import interp


def test_not_a_pipeline(tmp_path):
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(interp.NotAPipelineError, match="no model_index.json.*weights.bin"):
        interp.load(tmp_path)
    with pytest.raises(interp.NotAPipelineError, match="not a directory"):
        interp.load(tmp_path / "missing")
    (tmp_path / "model_index.json").write_text('{"_class_name": \n')
    with pytest.raises(interp.NotAPipelineError, match="model_index.json, line 2"):
        interp.load(tmp_path)


def test_unsupported_text_encoder(tiny_sd, tmp_path):
    tiny_sd.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "BertModel"]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(interp.UnsupportedModelError, match="'text_encoder' is a BertModel"):
        interp.load(tmp_path)


def test_unknown_site_lists_valid(tiny_sd):
    with pytest.raises(interp.SiteError, match="'text.blocks.0.hook_nope': unknown hook 'hook_nope'; valid hooks: hook_resid_post"):
        interp.capture(tiny_sd, ["a box"], ["text.blocks.0.hook_nope"])
    with pytest.raises(interp.SiteError, match="layer 9 out of range; text has layers 0..1"):
        interp.capture(tiny_sd, ["a box"], ["text.blocks.9.hook_resid_post"])
    with pytest.raises(interp.SiteError, match="unknown site 'text.layers.0'.*text.blocks.0.hook_resid_post"):
        interp.capture(tiny_sd, ["a box"], ["text.layers.0"])
    with pytest.raises(interp.SiteError, match="no encoder 'text_2'"):
        interp.capture(tiny_sd, ["a box"], ["text_2.blocks.0.hook_resid_post"])
    with pytest.raises(interp.SiteError, match="unknown site 'unet.down.7.attn.0.attn2.hook_out'.*unet.down.0"):
        interp.generate(tiny_sd, ["a box"], interventions=[interp.Mask(interp.Units("unet.down.7.attn.0.attn2.hook_out", [0]))])


def test_index_out_of_range(tiny_sd):
    d = tiny_sd.encoders["text"].d_mlp
    bad = interp.Mask(interp.Units("text.blocks.0.mlp.hook_post", [1, d + 3]))
    with pytest.raises(interp.SiteError, match=f"index \\[{d + 3}\\] out of range; valid units are 0..{d - 1}"):
        interp.encoder_output(tiny_sd, ["a box"], interventions=[bad])
    heads = tiny_sd.pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.heads
    with pytest.raises(interp.SiteError, match=f"valid heads are 0..{heads - 1}"):
        with interp.intervene(tiny_sd, [interp.Mask(interp.Units("unet.down.0.attn.0.attn2.hook_pattern", [50]))]):
            pass
    with pytest.raises(interp.SiteError, match="read-only"):
        interp.capture(tiny_sd, ["a box"], [], interventions=[interp.Mask(interp.Units("text.blocks.0.attn.hook_pattern", [0]))])


def test_prompt_too_long_is_reported(tiny_sd):
    long = "a " + "very " * 40 + "long box"
    for call in (lambda: interp.capture(tiny_sd, ["a box", long], ["text.blocks.0.hook_resid_post"]),
                 lambda: interp.generate(tiny_sd, ["a box", long]),
                 lambda: interp.encoder_output(tiny_sd, [long])):
        with pytest.raises(interp.PromptTooLongError, match="at most 16 tokens: prompt [01] has \\d+ tokens"):
            call()
    with pytest.warns(UserWarning, match="truncated"):
        out = interp.encoder_output(tiny_sd, [long], truncate=True)
    assert out.shape[1] == 16


def test_unknown_family():
    with pytest.raises(interp.UnsupportedModelError, match="unknown family 'kandinsky'.*flux"):
        interp.tiny("kandinsky")


def test_truncate_is_accepted_where_prompts_are_tokenized(tiny_sd):
    long = "a " + "very " * 40 + "long box"
    site = "text.blocks.0.hook_resid_post"
    with pytest.raises(interp.PromptTooLongError, match="truncate=True"):
        interp.mean_activation(tiny_sd, [long], site)
    with pytest.warns(UserWarning, match="truncated"):
        assert interp.mean_activation(tiny_sd, [long, "a box"], site, truncate=True).shape == (32,)
    with pytest.warns(UserWarning, match="truncated"):
        g = interp.capture_generation(tiny_sd, [long], [site], num_steps=1, truncate=True)
    assert g.acts[site].shape[-2] == 16
    with pytest.raises(interp.PromptTooLongError, match="prompt 0"):
        interp.generate(tiny_sd, ["a box"], num_steps=1, negative_prompt=long)


def test_text_block_parses_text_block_sites_and_names_the_rest():
    from interp.model.sites import TextBlock, text_block

    assert text_block("text_2.blocks.9.hook_resid_post") == TextBlock("text_2", 9, "hook_resid_post")
    assert text_block("text.blocks.0.mlp.hook_post") == ("text", 0, "mlp.hook_post")
    for bad in ("unet.down.0.attn.0.attn2.hook_out", "transformer.blocks.0.attn.hook_q", "text.blocks.x.hook_resid_post",
                "text.layers.1.hook_resid_post", "blocks.1.hook_resid_post", ""):
        with pytest.raises(interp.SiteError, match="not a text-encoder block site") as e:
            text_block(bad)
        assert repr(bad) in str(e.value)
    with pytest.raises(interp.SiteError, match="not a text-encoder block site"):
        text_block(3)

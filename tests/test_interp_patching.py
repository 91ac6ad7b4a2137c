"""Activation patching: patching the site that feeds the output reproduces the clean output."""

from __future__ import annotations


import pytest
import torch

import interp

CLEAN, CORRUPT = ["a Japanese-style box", "a Thai-style hat"], ["a box", "a hat"]


def _metric_against(model, encoder="text"):
    target = interp.encoder_output(model, CLEAN, encoder)
    return lambda out: -(out - target).pow(2).mean()


def test_patching_every_layer(tiny_model):
    enc = tiny_model.encoders["text"]
    sites = [f"text.blocks.{l}.hook_resid_post" for l in range(enc.n_layers)]
    res = interp.patch(tiny_model, CLEAN, CORRUPT, sites, _metric_against(tiny_model))
    assert res.clean_value == 0.0 and res.corrupt_value < 0
    feeding = enc.n_layers - 2 if enc.output_is_penultimate else enc.n_layers - 1
    row = next(r for r in res.rows if r["site"] == sites[feeding])
    assert row["value"] == pytest.approx(res.clean_value, abs=1e-10) and row["effect"] == pytest.approx(1.0)
    assert len(res.rows) == len(sites)


def test_patching_per_position_table_and_plot(tiny_sd, tmp_path):
    sites = ["text.blocks.0.hook_resid_post", "text.blocks.1.mlp.hook_post", "text.blocks.1.hook_attn_out"]
    res = interp.patch(tiny_sd, CLEAN, CORRUPT, sites, _metric_against(tiny_sd), positions=[0, 1, 2, -1])
    assert len(res.rows) == 12
    # CLIP is causal and both runs start with "<start> a": patching those positions changes nothing
    assert all(r["effect"] == pytest.approx(0.0, abs=1e-6) for r in res.rows if r["position"] in (0, 1))
    assert any(abs(r["effect"]) > 1e-3 for r in res.rows if r["position"] == 2)
    names, positions, m = res.matrix()
    assert m.shape == (3, 4) and not torch.isnan(m).any()
    assert "| text.blocks.0.hook_resid_post | 1 |" in res.to_markdown()
    res.plot(tmp_path / "patch.png")
    assert (tmp_path / "patch.png").stat().st_size > 1000


def test_patch_errors(tiny_sd):
    m = _metric_against(tiny_sd)
    with pytest.raises(interp.CultureLensError, match="2 clean prompts but 1 corrupt"):
        interp.patch(tiny_sd, CLEAN, CORRUPT[:1], ["text.blocks.0.hook_resid_post"], m)
    with pytest.raises(interp.SiteError, match="cannot be patched"):
        interp.patch(tiny_sd, CLEAN, CORRUPT, ["text.blocks.0.attn.hook_pattern"], m)
    with pytest.raises(interp.SiteError, match="positions \\[99\\] out of range"):
        interp.patch(tiny_sd, CLEAN, CORRUPT, ["text.blocks.0.hook_resid_post"], m, positions=[99])

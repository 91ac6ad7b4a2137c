"""Activation patching: patching the site that feeds the output reproduces the clean output."""

from __future__ import annotations


import math

import pytest
import torch

import interp
from families import tiny_family

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
    # positions need clean/corrupt prompts of equal token length: swap the cultures instead of dropping them
    corrupt = ["a Thai-style box", "a Japanese-style hat"]
    res = interp.patch(tiny_sd, CLEAN, corrupt, sites, _metric_against(tiny_sd), positions=[0, 1, 2, -1])
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
        interp.patch(tiny_sd, CLEAN, ["a Thai-style box", "a Japanese-style hat"], ["text.blocks.0.hook_resid_post"], m,
                     positions=[99])


# -- denoiser sites ---------------------------------------------------------------------------

DENOISER_FAMILIES = ("sd", "sdxl", "altdiffusion", "sd3", "flux")
D_CLEAN, D_CORRUPT = ["a Japanese-style box"], ["a Thai-style hat"]


def _to_clean(model, prompts=D_CLEAN):
    ref = interp.generate(model, prompts, seed=0).latents
    return lambda gen: -(gen.latents - ref).pow(2).mean()


def _hook_state(model):
    """Forward (pre-)hooks on every module and the attention processor classes: what must be the
    same before and after any culturelens call, even one that raised."""
    mods = list(model.denoiser.modules()) + [m for e in model.encoders.values() for m in e.module.modules()]
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in mods)
    procs = sorted((k, type(p).__name__) for k, p in model.denoiser.attn_processors.items())
    return hooks, procs, len(model.engine.sessions)


@pytest.mark.parametrize("family", ["sd", "altdiffusion"])
def test_patching_every_cross_attention_output_restores_clean_latents(request, family):
    # SD 1.x / AltDiffusion UNets see the text only through attn2: patching every attn2 output at
    # every step, both CFG branches, makes the corrupt run compute exactly the clean run.
    model = tiny_family(request, family)
    sites = model.sites("xattn_out")
    clean_lat = interp.generate(model, D_CLEAN, seed=0).latents
    got = []
    res = interp.patch(model, D_CLEAN, D_CORRUPT, [sites], lambda g: got.append(g.latents) or -(g.latents - clean_lat).pow(2).mean())
    assert res.rows[0]["effect"] == pytest.approx(1.0, abs=1e-6) and res.corrupt_value < -1e-4
    torch.testing.assert_close(got[-1], clean_lat, atol=1e-5, rtol=0)
    # one site alone does not (the others still read the corrupt prompt)
    single = interp.patch(model, D_CLEAN, D_CORRUPT, sites[:1], _to_clean(model))
    assert single.rows[0]["effect"] < 0.99


@pytest.mark.parametrize("family", ["sd", "sdxl", "altdiffusion"])
def test_all_heads_at_hook_z_equal_hook_out_and_one_head_one_step_less(request, family):
    model = tiny_family(request, family)
    out_site = model.sites("xattn_out")[0]
    z_site = out_site.replace("hook_out", "hook_z")
    metric = _to_clean(model)
    both = interp.patch(model, D_CLEAN, D_CORRUPT, [out_site, z_site], metric)
    v_out, v_z = (r["value"] for r in both.rows)
    # same math (the processor path rounds differently): equal to 1e-4 of the clean-corrupt gap
    tol = 1e-4 * abs(both.clean_value - both.corrupt_value)
    assert v_out == pytest.approx(v_z, abs=tol)
    assert abs(both.rows[0]["effect"]) > 1e-3
    one = interp.patch(model, D_CLEAN, D_CORRUPT, [z_site], metric, steps=[0], heads=[0])
    assert abs(one.rows[0]["value"] - one.corrupt_value) < abs(v_z - both.corrupt_value)
    # heads grouped = all heads
    n_heads = interp.model.sites.parse(model, z_site).dim
    grouped = interp.patch(model, D_CLEAN, D_CORRUPT, [z_site], metric, heads=[list(range(n_heads))])
    assert grouped.rows[0]["value"] == pytest.approx(v_z, abs=tol)  # 1 row vs 2 rows per batch: rounding


@pytest.mark.parametrize("family", DENOISER_FAMILIES)
def test_head_step_grid_runs_on_everytiny_family(request, family):
    model = tiny_family(request, family)
    z = next(s for s in model.sites() if s.endswith("hook_z") and not s.startswith("text"))  # a denoiser z
    res = interp.patch(model, D_CLEAN, D_CORRUPT, [z], _to_clean(model), steps="each", heads=[0, 1])
    assert [(r["step"], r["head"]) for r in res.rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(math.isfinite(r["value"]) for r in res.rows)
    assert res.meta["generations"] == 1  # four conditions packed into one batch
    steps, heads, m = res.matrix("step", "head")
    assert m.shape == (2, 2) and steps == [0, 1] and heads == [0, 1]


def test_batching_conditions_gives_the_same_values(tiny_sd):
    z = "unet.up.1.attn.0.attn2.hook_z"
    metric = _to_clean(tiny_sd)
    packed = interp.patch(tiny_sd, D_CLEAN, D_CORRUPT, [z], metric, steps="each", heads="each", batch_size=16)
    alone = interp.patch(tiny_sd, D_CLEAN, D_CORRUPT, [z], metric, steps="each", heads="each", batch_size=1)
    assert packed.meta["generations"] == 1 and alone.meta["generations"] == len(alone.rows) == 16
    for a, b in zip(packed.rows, alone.rows):
        assert (a["step"], a["head"]) == (b["step"], b["head"])
        assert a["value"] == pytest.approx(b["value"], rel=1e-4, abs=1e-7)


def test_patch_branches_positions_and_pattern_sites(tiny_sd):
    site = "unet.down.0.attn.0.attn2.hook_out"
    metric = _to_clean(tiny_sd)
    res = {b: interp.patch(tiny_sd, D_CLEAN, D_CORRUPT, [site], metric, steps=[0], branch=b)
           for b in ("both", "cond", "uncond")}
    # at step 0 both runs start from the same noise and the same empty negative prompt: the
    # unconditional rows agree, so patching them changes nothing and "cond" does all of "both"
    assert res["uncond"].rows[0]["value"] == pytest.approx(res["uncond"].corrupt_value, rel=1e-6)
    assert res["cond"].rows[0]["value"] == pytest.approx(res["both"].rows[0]["value"], rel=1e-6)
    assert abs(res["cond"].rows[0]["effect"]) > 1e-3
    # token positions of the cross-attention pattern (equal-length prompts)
    clean, corrupt_p = ["a Japanese-style box"], ["a Japanese-style hat"]
    n = len(tiny_sd.encoders["text"].tokenizer(clean[0])["input_ids"])
    assert n == len(tiny_sd.encoders["text"].tokenizer(corrupt_p[0])["input_ids"])
    pat = site.replace("hook_out", "hook_pattern")
    byp = interp.patch(tiny_sd, clean, corrupt_p, [pat], _to_clean(tiny_sd, clean), positions=[0, n - 2])
    assert [r["position"] for r in byp.rows] == [0, n - 2]
    # each position is its own condition (the probabilities on other keys stay the corrupt run's)
    assert all(math.isfinite(r["effect"]) and abs(r["effect"]) > 1e-4 for r in byp.rows)
    assert byp.rows[0]["value"] != byp.rows[1]["value"]


def test_patch_denoiser_errors(tiny_sd):
    m = _to_clean(tiny_sd)
    z, out = "unet.down.0.attn.0.attn2.hook_z", "unet.down.0.attn.0.attn2.hook_out"
    with pytest.raises(interp.CultureLensError, match="steps \\[5\\] out of range for a 2-step run"):
        interp.patch(tiny_sd, D_CLEAN, D_CORRUPT, [z], m, steps=[5])
    with pytest.raises(interp.SiteError, match="has no heads"):
        interp.patch(tiny_sd, D_CLEAN, D_CORRUPT, [out], m, heads=[0])
    # a lone int is neither a count nor one index here (num_steps= is the count); floats and bools
    # are refused, not truncated, as interventions refuse them
    with pytest.raises(interp.CultureLensError, match=r"steps=4 is a single integer.*\[4\] patches step 4 alone.*num_steps="):
        interp.patch(tiny_sd, D_CLEAN, D_CORRUPT, [z], m, steps=4)
    with pytest.raises(interp.CultureLensError, match=r"patch: steps\[0\]: indices must be integers"):
        interp.patch(tiny_sd, D_CLEAN, D_CORRUPT, [z], m, steps=[1.5])
    with pytest.raises(interp.CultureLensError, match=r"patch: heads\[1\]: indices must be integers"):
        interp.patch(tiny_sd, D_CLEAN, D_CORRUPT, [z], m, heads=[[0], [1, True]])
    with pytest.raises(interp.CultureLensError, match=r"patch: heads\[0\] is an empty group"):
        interp.patch(tiny_sd, D_CLEAN, D_CORRUPT, [z], m, heads=[[]])
    with pytest.raises(interp.CultureLensError, match="heads \\[99\\] out of range"):
        interp.patch(tiny_sd, D_CLEAN, D_CORRUPT, [z], m, heads=[99])
    with pytest.raises(interp.SiteError, match="steps= applies to denoiser sites only"):
        interp.patch(tiny_sd, CLEAN, CORRUPT, ["text.blocks.0.hook_resid_post"], _metric_against(tiny_sd), steps=[0])
    with pytest.raises(interp.SiteError, match="in one call"):
        interp.patch(tiny_sd, D_CLEAN, D_CORRUPT, ["text.blocks.0.hook_resid_post", out], m)
    with pytest.raises(interp.CultureLensError, match="different token lengths"):
        interp.patch(tiny_sd, ["a Japanese-style box"], ["a box"], [out.replace("hook_out", "hook_pattern")], m,
                     positions=[1])
    with pytest.raises(interp.CultureLensError, match="different token lengths"):
        interp.patch(tiny_sd, ["a Japanese-style box"], ["a box"], ["text.blocks.0.hook_resid_post"],
                     _metric_against(tiny_sd), positions=[1])
    with pytest.raises(interp.SiteError, match="no token axis"):
        interp.patch(tiny_sd, D_CLEAN, D_CORRUPT, [out], m, positions=[1])
    with pytest.raises(interp.CultureLensError, match="branch='uncond' but this run has no classifier-free"):
        interp.patch(tiny_sd, D_CLEAN, D_CORRUPT, [out], m, branch="uncond", guidance=1.0)


def test_nan_effect_warns_naming_the_condition(tiny_sd):
    with pytest.warns(UserWarning) as caught:
        res = interp.patch(tiny_sd, D_CLEAN, D_CORRUPT, ["unet.down.0.attn.0.attn2.hook_out"], lambda g: 1.0,
                           steps="each")
    assert [str(w.message) for w in caught] == [
        "patch: the metric gives the clean and corrupt runs the same value (1 vs 1); the effects are "
        "meaningless: choose prompts or a metric that differ"] + [
        f"patch: effect is NaN for site 'unet.down.0.attn.0.attn2.hook_out', step {t}, head all, position all "
        "(clean and corrupt values are equal)" for t in (0, 1)]
    assert all(math.isnan(r["effect"]) for r in res.rows)
    with pytest.warns(UserWarning, match="clean and corrupt values are equal"):
        interp.patch(tiny_sd, CLEAN, CORRUPT, ["text.blocks.0.hook_resid_post"], lambda out: 0.0)


def test_no_hook_survives_a_failing_metric(tiny_sd, monkeypatch):
    before = _hook_state(tiny_sd)
    calls = []

    def metric(gen):
        calls.append(1)
        if len(calls) > 2:  # clean and corrupt score, then the first patched condition raises
            raise RuntimeError("metric failed")
        return 0.0

    with pytest.raises(RuntimeError, match="metric failed"):
        interp.patch(tiny_sd, D_CLEAN, D_CORRUPT, ["unet.down.0.attn.0.attn2.hook_pattern"], metric, heads=[0])
    assert _hook_state(tiny_sd) == before

    def boom(self, act):
        raise RuntimeError("inside the patched generation")

    monkeypatch.setattr(interp.methods.patching._MaskedReplace, "apply", boom)
    with pytest.raises(RuntimeError, match="inside the patched generation"):
        interp.patch(tiny_sd, D_CLEAN, D_CORRUPT, ["unet.down.0.attn.0.attn2.hook_z"], _to_clean(tiny_sd), heads=[1])
    assert _hook_state(tiny_sd) == before


def test_patch_result_save_load_table_and_plots(tiny_sd, tmp_path):
    assert "save" in interp.PatchResult.__dict__ and "load" in interp.PatchResult.__dict__  # not nnsight's global save
    z = "unet.up.1.attn.0.attn2.hook_z"
    res = interp.patch(tiny_sd, D_CLEAN, D_CORRUPT, [z, "unet.mid.0.attn.0.attn2.hook_z"], _to_clean(tiny_sd),
                       steps=[0, [0, 1]], heads="each")
    assert res.save(tmp_path / "p") == tmp_path / "p"
    back = interp.PatchResult.load(tmp_path / "p")
    assert back.rows == res.rows and back.meta == res.meta
    assert (back.clean_value, back.corrupt_value) == (res.clean_value, res.corrupt_value)
    md = res.to_markdown()
    assert md.splitlines()[0] == "| site | step | head | position | value | effect |"
    assert f"| {z} | 0,1 | 3 | all |" in md
    res.plot(tmp_path / "site_step.png")
    res.plot(tmp_path / "step_head.png", rows="step", cols="head")
    assert (tmp_path / "site_step.png").stat().st_size > 1000 and (tmp_path / "step_head.png").stat().st_size > 1000
    with pytest.raises(interp.CultureLensError, match="missing"):
        interp.PatchResult.load(tmp_path / "nothing")
    # text results keep their table and round trip too, NaN included
    t = interp.PatchResult(rows=[{"site": "text.blocks.0.hook_resid_post", "layer": 0, "kind": "resid_post",
                                  "step": None, "head": None, "position": 1, "value": 0.5, "effect": math.nan}],
                           clean_value=1.0, corrupt_value=1.0, meta={"kind": "text"})
    t.save(tmp_path / "t")
    assert math.isnan(interp.PatchResult.load(tmp_path / "t").rows[0]["effect"])


def test_metric_must_be_one_number_and_must_tell_clean_from_corrupt(tiny_sd):
    with pytest.raises(interp.CultureLensError, match=r"the metric returned 4 values \(shape \[4\]\)"):
        interp.patch(tiny_sd, CLEAN, CORRUPT, ["text.blocks.0.hook_resid_post"], lambda out: out[0, 0, :4])
    # nearly equal (float noise) warns too, not only exactly equal
    with pytest.warns(UserWarning, match="same value"):
        interp.patch(tiny_sd, CLEAN, CORRUPT, ["text.blocks.0.hook_resid_post"],
                     lambda out: 49.638 + 1e-9 * float(out.mean()))


def test_head_matrix_keeps_sites_apart_and_plot_scales_to_the_data(tiny_sd, tmp_path):
    import matplotlib

    a, b = "unet.up.1.attn.0.attn2.hook_z", "unet.mid.0.attn.0.attn2.hook_z"
    rows = [{"site": s, "step": t, "head": h, "position": None, "value": 0.0, "effect": e}
            for s, e in ((a, 1e-4), (b, -3e-4)) for t in (0, 1) for h in (0, 1)]
    res = interp.PatchResult(rows=rows, clean_value=1.0, corrupt_value=0.0, meta={"kind": "denoiser"})
    steps, heads, m = res.matrix("step", "head")
    assert steps == [0, 1] and len(heads) == 4  # head 0 of a and head 0 of b are different rows
    assert [interp.methods.patching._label(h) for h in heads][:2] == [f"{a} head 0", f"{a} head 1"]
    assert torch.allclose(m[:, :2], torch.full((2, 2), 1e-4)) and torch.allclose(m[:, 2:], torch.full((2, 2), -3e-4))
    _, _, by_site = res.matrix("site", "head")
    assert by_site.shape == (2, 2)  # with a site axis, heads stay plain indices
    fig = res.plot(rows="step", cols="head")
    lo, hi = fig.axes[0].images[0].get_clim()
    assert (lo, hi) == pytest.approx((-3e-4, 3e-4))
    fig = res.plot(rows="step", cols="head", vmin=-1, vmax=1)
    assert fig.axes[0].images[0].get_clim() == (-1, 1)
    matplotlib.pyplot.close("all")


def test_branch_choices_are_defined_once_and_patch_states_its_default(tiny_sd):
    import interp.methods.patching as patching
    from interp.interventions import BRANCH_CHOICES

    assert patching.BRANCH_CHOICES is BRANCH_CHOICES and not hasattr(patching, "BRANCHES")
    m = _to_clean(tiny_sd)
    with pytest.raises(interp.CultureLensError) as patch_err:
        interp.patch(tiny_sd, D_CLEAN, D_CORRUPT, ["unet.down.0.attn.0.attn2.hook_out"], m, branch="neg")
    with pytest.raises(interp.CultureLensError) as iv_err:
        interp.Replace("unet.down.0.attn.0.attn2.hook_out", torch.zeros(1), branch="neg")
    choices = "'cond', 'uncond', 'both'"
    assert choices in str(patch_err.value) and choices in str(iv_err.value)
    assert "patch's default is 'both'" in str(patch_err.value)


def test_flux_branches_say_guidance_is_embedded_and_uncond_is_refused(request):
    flux = tiny_family(request, "flux")
    z = "transformer.blocks.0.attn.hook_z"
    m = _to_clean(flux)
    for b in ("cond", "uncond"):
        with pytest.raises(interp.CultureLensError) as e:
            interp.patch(flux, D_CLEAN, D_CORRUPT, [z], m, branch=b)
        msg = str(e.value)
        assert "embedded" in msg and "one row" in msg and "conditional" in msg, msg
        assert "no classifier-free guidance" not in msg and "guidance > 1" not in msg, msg
    # an intervention on the (absent) unconditional branch is refused, not a silent no-op
    clean = interp.capture_generation(flux, D_CLEAN, [z], seed=0)
    for iv in (interp.Replace(z, clean.acts[z], branch="uncond"), interp.Mask(interp.Units(z, [0]), branch="uncond"),
               interp.Mask(interp.Units("text_2.blocks.0.mlp.hook_post", [0]), branch="uncond")):
        with pytest.raises(interp.CultureLensError, match="branch='uncond' on FLUX.*embedded.*true_cfg_scale"):
            interp.generate(flux, D_CORRUPT, seed=0, interventions=[iv])
    assert _hook_state(flux)[2] == 0
    # with true CFG the unconditional branch exists and the same edit is accepted
    iv = interp.Mask(interp.Units(z, [0]), branch="uncond")
    interp.generate(flux, D_CORRUPT, seed=0, negative_prompt="blurry", true_cfg_scale=3.0, interventions=[iv])


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_patch_positions_on_joint_attention_mean_what_replace_positions_mean(request, family):
    model = tiny_family(request, family)
    k = "transformer.blocks.0.attn.hook_k"
    joint = model.joint_positions()
    text_pos, image_pos = joint["text"][1], joint["image"][2]
    # prompts of different token lengths: joint positions index the padded joint sequence
    clean, corrupt = ["a Japanese-style box"], ["a hat"]
    metric = _to_clean(model, clean)
    res = interp.patch(model, clean, corrupt, [k], metric, positions=[text_pos, image_pos, -1])
    assert [r["position"] for r in res.rows] == [text_pos, image_pos, -1]
    assert all(math.isfinite(r["effect"]) for r in res.rows)
    captured = interp.capture_generation(model, clean, [k], seed=0).acts[k]
    for r in res.rows:
        iv = interp.Replace(k, captured, positions=[r["position"]], branch="both")
        by_replace = float(metric(interp.generate(model, corrupt, seed=0, interventions=[iv])))
        assert r["value"] == pytest.approx(by_replace, rel=1e-4, abs=1e-7), r["position"]
    assert res.rows[0]["value"] != res.rows[1]["value"]
    # out of range is refused in both, naming the joint length
    n = acts_n = captured.shape[3]
    with pytest.raises(interp.SiteError, match=f"positions \\[{n}\\] out of range for {acts_n} tokens"):
        interp.patch(model, clean, corrupt, [k], metric, positions=[n])

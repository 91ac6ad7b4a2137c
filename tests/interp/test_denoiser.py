"""Denoiser sites (UNet, SD3, FLUX): one grammar, every site readable and writable, step-,
branch- and head-aware interventions, and nothing left behind."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.engine.session import runtime

CLEAN, CORRUPT = ["a Japanese-style box", "a cat"], ["a box", "a dog"]
KW = dict(seed=3, num_steps=2, guidance=5.0)


@pytest.fixture(scope="module")
def tiny_flux() -> interp.Model:
    return interp.tiny("flux", seed=0)


def _state(model):
    """Everything a session could leave behind: hooks, processors, the pipeline class, wrappers."""
    mods = list(model.denoiser.modules())
    for enc in model.encoders.values():
        mods += list(enc.module.modules())
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in mods)
    procs = {k: type(v) for k, v in model.denoiser.attn_processors.items()}
    sched = {k for k in ("step", "set_timesteps") if k in model.pipe.scheduler.__dict__}
    return hooks, procs, type(model.pipe), sched, len(model.engine.sessions)


def _xattn_outs(model):
    return [s for s in model.sites("xattn_out")]


# -- reading -------------------------------------------------------------------------------------

def test_unet_site_shapes(tiny_sd):
    stem = "unet.down.0.attn.0"
    names = [f"{stem}.attn1.hook_q", f"{stem}.attn2.hook_k", f"{stem}.attn2.hook_v", f"{stem}.attn2.hook_z",
             f"{stem}.attn1.hook_pattern", f"{stem}.attn2.hook_pattern", f"{stem}.attn2.hook_out", f"{stem}.hook_out",
             "unet.down.0.resnet.0.hook_out", "unet.mid.0.resnet.1.hook_out"]
    g = interp.capture_generation(tiny_sd, CORRUPT, names, **KW)
    a2 = tiny_sd.pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    H, S = a2.heads, tiny_sd.encoders["text"].max_length
    hw = tiny_sd.pipe.unet.config.sample_size ** 2
    d = a2.to_q.out_features // H
    C = tiny_sd.pipe.unet.config.block_out_channels[0]
    assert g.acts[f"{stem}.attn1.hook_q"].shape == (2, 2, 2, hw, H, d)
    assert g.acts[f"{stem}.attn2.hook_k"].shape == (2, 2, 2, S, H, d)
    assert g.acts[f"{stem}.attn2.hook_z"].shape == (2, 2, 2, hw, H, d)
    assert g.acts[f"{stem}.attn1.hook_pattern"].shape == (2, 2, 2, H, hw, hw)
    assert g.acts[f"{stem}.attn2.hook_pattern"].shape == (2, 2, 2, H, hw, S)
    assert g.acts[f"{stem}.hook_out"].shape == (2, 2, 2, C, 8, 8)
    assert g.acts["unet.down.0.resnet.0.hook_out"].shape == (2, 2, 2, C, 8, 8)
    # z is the pattern applied to v, head by head, and hook_out is z's output projection
    pat, v, z = (g.acts[f"{stem}.attn2.{h}"] for h in ("hook_pattern", "hook_v", "hook_z"))
    torch.testing.assert_close(pat.sum(-1), torch.ones(pat.shape[:-1]))
    torch.testing.assert_close(torch.einsum("tcbhqk,tcbkhd->tcbqhd", pat, v), z, atol=1e-5, rtol=1e-4)
    out = a2.to_out[0](z.flatten(-2))
    torch.testing.assert_close(out, g.acts[f"{stem}.attn2.hook_out"], atol=1e-5, rtol=1e-4)


def test_reading_any_site_changes_nothing(tiny_sd, tiny_sd3, tiny_flux):
    """Recording q/k/v/z and patterns runs our processors, which reproduce diffusers' math exactly
    (the output still comes from SDPA when the pattern is only read)."""
    for model in (tiny_sd, tiny_sd3, tiny_flux):
        sites = [s for s in model.sites() if s.split(".")[0] in ("unet", "transformer")]
        base = interp.generate(model, CORRUPT[:1], **KW)
        g = interp.capture_generation(model, CORRUPT[:1], sites, **KW)
        assert torch.equal(base.latents, g.latents), model.family
        assert set(g.acts) == set(sites)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_mmdit_sites_and_joint_positions(family, tiny_sd3, tiny_flux):
    model = tiny_sd3 if family == "sd3" else tiny_flux
    names = ["transformer.blocks.0.attn.hook_q", "transformer.blocks.0.attn.hook_pattern",
             "transformer.blocks.0.attn.hook_z", "transformer.blocks.0.hook_img_out", "transformer.blocks.0.hook_txt_out"]
    g = interp.capture_generation(model, CORRUPT[:1], names, **KW)
    pos = model.joint_positions()
    n = len(pos["text"]) + len(pos["image"])
    assert sorted([*pos["text"], *pos["image"]]) == list(range(n))
    attn = model.denoiser.transformer_blocks[0].attn
    C = 2 if family == "sd3" else 1  # tiny FLUX is guidance-distilled: no CFG rows unless true_cfg_scale
    assert g.acts[names[0]].shape == (2, C, 1, n, attn.heads, attn.to_q.out_features // attn.heads)
    assert g.acts[names[1]].shape == (2, C, 1, attn.heads, n, n)
    assert g.acts[names[3]].shape[3] == len(pos["image"]) and g.acts[names[4]].shape[3] == len(pos["text"])
    # z is the pattern applied to v over the joint sequence
    v = interp.capture_generation(model, CORRUPT[:1], ["transformer.blocks.0.attn.hook_v"], **KW).acts[
        "transformer.blocks.0.attn.hook_v"]
    torch.testing.assert_close(torch.einsum("tcbhqk,tcbkhd->tcbqhd", g.acts[names[1]], v), g.acts[names[2]],
                               atol=1e-5, rtol=1e-4)


def test_flux_single_blocks_and_true_cfg(tiny_flux):
    site = "transformer.single_blocks.0.attn.hook_z"
    g = interp.capture_generation(tiny_flux, CORRUPT, [site, "text_2.blocks.0.hook_resid_post"], seed=0, num_steps=2,
                                  negative_prompt="blurry", true_cfg_scale=3.0)
    assert g.acts[site].shape[:3] == (2, 2, 2)  # [T, uncond|cond, B]: two transformer calls per step
    assert g.acts["text_2.blocks.0.hook_resid_post"].shape[0] == 2  # prompt, then negative prompt
    assert not torch.allclose(g.acts[site][:, 0], g.acts[site][:, 1])
    # default branch: only the conditional call is edited
    heads = [0]
    iv = interp.Mask(interp.Units(site, heads))
    m = interp.capture_generation(tiny_flux, CORRUPT, [site], seed=0, num_steps=2, negative_prompt="blurry",
                                  true_cfg_scale=3.0, interventions=[iv]).acts[site]
    assert torch.all(m[:, 1, :, :, 0] == 0) and m[0, 0, :, :, 0].abs().sum() > 0
    torch.testing.assert_close(m[0, 0], g.acts[site][0, 0])


# -- writing: patching reproduces the clean run ---------------------------------------------------

def test_patching_every_cross_attention_output_restores_clean_latents(tiny_sd):
    """SD 1.x: text reaches the UNet only through attn2, so clean attn2 outputs at every step and
    both branches turn the corrupt run into the clean one."""
    sites = _xattn_outs(tiny_sd)
    clean = interp.capture_generation(tiny_sd, CLEAN, sites, **KW)
    corrupt = interp.generate(tiny_sd, CORRUPT, **KW)
    assert not torch.allclose(clean.latents, corrupt.latents)
    ivs = [interp.Replace(s, clean.acts[s], branch="both") for s in sites]
    patched = interp.generate(tiny_sd, CORRUPT, interventions=ivs, **KW)
    assert torch.equal(patched.latents, clean.latents)
    # Both runs share the negative prompt "", so their unconditional rows differ only through the
    # latents: patching the conditional rows alone (the default branch) restores the clean run too.
    cond_only = interp.generate(tiny_sd, CORRUPT, interventions=[interp.Replace(s, clean.acts[s]) for s in sites], **KW)
    assert torch.equal(cond_only.latents, clean.latents)
    # ... but not when one cross-attention is left out
    part = interp.generate(tiny_sd, CORRUPT, interventions=ivs[1:], **KW)
    assert not torch.allclose(part.latents, clean.latents)


def test_all_heads_at_z_equal_hook_out_and_one_head_changes_less(tiny_sd):
    stem = "unet.up.1.attn.0.attn2"
    clean = interp.capture_generation(tiny_sd, CLEAN, [f"{stem}.hook_z", f"{stem}.hook_out"], **KW)
    corrupt = interp.generate(tiny_sd, CORRUPT, **KW)
    via_z = interp.generate(tiny_sd, CORRUPT, interventions=[
        interp.Replace(f"{stem}.hook_z", clean.acts[f"{stem}.hook_z"], branch="both")], **KW)
    via_out = interp.generate(tiny_sd, CORRUPT, interventions=[
        interp.Replace(f"{stem}.hook_out", clean.acts[f"{stem}.hook_out"], branch="both")], **KW)
    torch.testing.assert_close(via_z.latents, via_out.latents, atol=1e-6, rtol=1e-5)
    H = clean.acts[f"{stem}.hook_z"].shape[-2]
    all_heads = interp.generate(tiny_sd, CORRUPT, interventions=[
        interp.Replace(f"{stem}.hook_z", clean.acts[f"{stem}.hook_z"], heads=list(range(H)))], **KW)
    one = interp.generate(tiny_sd, CORRUPT, interventions=[
        interp.Replace(f"{stem}.hook_z", clean.acts[f"{stem}.hook_z"], heads=[1], steps=[0])], **KW)
    d_all = (all_heads.latents - corrupt.latents).norm()
    d_one = (one.latents - corrupt.latents).norm()
    assert 0 < d_one < d_all


def test_heads_and_steps_select_what_is_edited(tiny_sd):
    site = "unet.down.0.attn.0.attn2.hook_z"
    base = interp.capture_generation(tiny_sd, CORRUPT, [site], **KW).acts[site]
    got = interp.capture_generation(tiny_sd, CORRUPT, [site], interventions=[
        interp.Mask(interp.Units(site, [0, 1, 2, 3, 4, 5, 6, 7]), heads=[2], steps=[1])], **KW).acts[site]
    assert torch.equal(got[0], base[0])  # step 0 untouched
    assert torch.all(got[1, 1, :, :, 2] == 0) and torch.equal(got[1, 0], base[1, 0])  # cond rows, head 2 only
    keep = [h for h in range(base.shape[-2]) if h != 2]
    assert got[1, 1][..., keep, :].abs().sum() > 0


def test_pattern_sites_are_writable(tiny_sd, tiny_sd3):
    site = "unet.down.0.attn.0.attn2.hook_pattern"
    base = interp.capture_generation(tiny_sd, CORRUPT, [site], **KW)
    masked = interp.capture_generation(tiny_sd, CORRUPT, [site], interventions=[
        interp.Mask(interp.Units(site, [0, 3]), branch="both")], **KW)
    assert torch.all(masked.acts[site][:, :, :, [0, 3]] == 0)
    assert not torch.equal(masked.latents, base.latents)
    # a pattern edit that acts at no call (no unconditional rows without CFG) changes nothing at all
    plain = interp.generate(tiny_sd, CORRUPT, seed=3, num_steps=2, guidance=1.0)
    idle = interp.generate(tiny_sd, CORRUPT, seed=3, num_steps=2, guidance=1.0,
                           interventions=[interp.Mask(interp.Units(site, [0]), branch="uncond")])
    assert torch.equal(plain.latents, idle.latents)
    # ... and one that acts at step 1 only leaves step 0 bit-identical downstream
    later = "unet.up.1.attn.0.attn2.hook_out"
    ref = interp.capture_generation(tiny_sd, CORRUPT, [later], **KW).acts[later]
    got = interp.capture_generation(tiny_sd, CORRUPT, [later], interventions=[
        interp.Mask(interp.Units(site, [0]), steps=[1])], **KW).acts[later]
    assert torch.equal(got[0], ref[0]) and not torch.equal(got[1, 1], ref[1, 1])
    # SD3 joint pattern: replacing it by uniform attention over text keys changes the output
    j = "transformer.blocks.0.attn.hook_pattern"
    sd3_base = interp.generate(tiny_sd3, CORRUPT[:1], **KW)
    uni = torch.zeros(96)
    uni[list(tiny_sd3.joint_positions()["text"])] = 1 / 32
    sd3_edit = interp.generate(tiny_sd3, CORRUPT[:1], interventions=[interp.Replace(j, uni, heads=[1])], **KW)
    assert not torch.allclose(sd3_base.latents, sd3_edit.latents)


# -- CFG branches at text sites ---------------------------------------------------------------------

@pytest.mark.parametrize("family", ["sd", "sdxl", "altdiffusion"])
def test_text_edits_spare_the_negative_prompt_by_default(family, request):
    model = request.getfixturevalue(f"tiny_{family}")
    site, read = "text.blocks.0.mlp.hook_post", "text.blocks.1.hook_resid_post"
    units = interp.Units(site, list(range(16)))
    kw = dict(seed=1, num_steps=2, guidance=6.0, negative_prompt="blurry")  # SDXL encodes a given negative prompt
    base = interp.capture_generation(model, CORRUPT, [read], **kw).acts[read]  # [prompt, negative]
    assert base.shape[0] == 2
    for branch, changed in (("cond", [True, False]), ("both", [True, True]), ("uncond", [False, True])):
        got = interp.capture_generation(model, CORRUPT, [read], interventions=[interp.Mask(units, branch=branch)],
                                        **kw).acts[read]
        assert [not torch.equal(got[i], base[i]) for i in (0, 1)] == changed, branch
    # and the UNet's unconditional rows see the unchanged negative prompt at the first step
    xo = _xattn_outs(model)[0]
    b0 = interp.capture_generation(model, CORRUPT, [xo], **kw).acts[xo]
    m0 = interp.capture_generation(model, CORRUPT, [xo], interventions=[interp.Mask(units)], **kw).acts[xo]
    assert torch.equal(m0[0, 0], b0[0, 0]) and not torch.equal(m0[0, 1], b0[0, 1])


def test_uncond_edit_without_negative_encoding_warns(tiny_sdxl):
    units = interp.Units("text.blocks.0.mlp.hook_post", [0, 1])
    with pytest.warns(UserWarning, match="did not act"):
        interp.generate(tiny_sdxl, CORRUPT[:1], seed=0, num_steps=1, interventions=[interp.Mask(units, branch="uncond")])


def test_on_rows_composes_with_branch(tiny_sd):
    site, read = "text.blocks.0.mlp.hook_post", "text.blocks.1.hook_resid_post"
    kw = dict(seed=1, num_steps=1, guidance=6.0)
    base = interp.capture_generation(tiny_sd, CORRUPT, [read], **kw).acts[read]
    iv = interp.OnRows(interp.Mask(interp.Units(site, list(range(16)))), [False, True])
    got = interp.capture_generation(tiny_sd, CORRUPT, [read], interventions=[iv], **kw).acts[read]
    assert torch.equal(got[0, 0], base[0, 0]) and not torch.equal(got[0, 1], base[0, 1])
    assert torch.equal(got[1], base[1])  # the negative prompt's encoding is untouched


# -- step counter -------------------------------------------------------------------------------------

def test_step_counter_restarts_at_each_pipeline_call(tiny_sd):
    from interp.methods.generation import pipeline_kwargs

    iv = interp.Mask(interp.Units("unet.up.1.attn.0.attn2.hook_out", list(range(8))), steps=[1])
    ref = interp.generate(tiny_sd, CORRUPT, interventions=[iv], **KW).latents
    plain = interp.generate(tiny_sd, CORRUPT, **KW).latents
    assert not torch.equal(ref, plain)
    kw = pipeline_kwargs(tiny_sd, CORRUPT, 3, 2, 5.0, output_type="latent")
    with torch.no_grad(), interp.intervene(tiny_sd, [iv]):
        first = tiny_sd.pipe(**kw).images
        kw = pipeline_kwargs(tiny_sd, CORRUPT, 3, 2, 5.0, output_type="latent")
        second = tiny_sd.pipe(**kw).images
    assert torch.equal(first, second)


# -- errors and cleanup ---------------------------------------------------------------------------------

def test_steps_branch_heads_errors(tiny_sd):
    z = "unet.down.0.attn.0.attn2.hook_z"
    with pytest.raises(interp.CultureLensError, match="this run has 2 denoising steps"):
        interp.generate(tiny_sd, CORRUPT, interventions=[interp.Mask(interp.Units(z, [0]), steps=[5])], **KW)
    with pytest.raises(interp.SiteError, match="text site"):
        interp.generate(tiny_sd, CORRUPT, interventions=[
            interp.Mask(interp.Units("text.blocks.0.mlp.hook_post", [0]), steps=[0])], **KW)
    with pytest.raises(interp.SiteError, match="site without heads"):
        interp.generate(tiny_sd, CORRUPT, interventions=[
            interp.Mask(interp.Units("unet.down.0.attn.0.attn2.hook_out", [0]), heads=[0])], **KW)
    with pytest.raises(interp.SiteError, match="heads \\[99\\] out of range; valid heads are 0..7"):
        interp.generate(tiny_sd, CORRUPT, interventions=[interp.Mask(interp.Units(z, [0]), heads=[99])], **KW)
    with pytest.raises(interp.CultureLensError, match="branch='neg'"):
        interp.Mask(interp.Units(z, [0]), branch="neg")
    with pytest.raises(interp.CultureLensError, match=r"capture_generation's \[T, C, B, \.\.\.\]"):
        interp.generate(tiny_sd, CORRUPT, interventions=[interp.Replace(z, torch.zeros(3, 5))], **KW)
    with pytest.raises(interp.SiteError, match="attn2.hook_z"):
        interp.capture_generation(tiny_sd, CORRUPT, ["unet.down.0.attn.0.attn2.hook_zz"], **KW)


def test_nothing_survives_an_exception(tiny_sd, tiny_flux):
    for model, site in ((tiny_sd, "unet.down.0.attn.0.attn2.hook_pattern"),
                        (tiny_flux, "transformer.blocks.0.attn.hook_z")):
        before = _state(model)
        ivs = [interp.Mask(interp.Units(site, [0])), interp.Mask(interp.Units("text.blocks.0.mlp.hook_post", [1]))]
        with pytest.raises(RuntimeError, match="boom"):
            with interp.intervene(model, ivs):
                assert _state(model) != before
                raise RuntimeError("boom")
        assert _state(model) == before
        with pytest.raises(interp.CultureLensError, match="out of range"):  # raised inside the pipeline call
            interp.generate(model, CORRUPT, interventions=[interp.Mask(interp.Units(site, [0]), steps=[9])],
                            seed=0, num_steps=2)
        assert _state(model) == before and runtime(model).sessions == []


def test_processor_only_where_needed(tiny_sd):
    site = "unet.up.1.attn.0.attn2.hook_v"
    before = {k: type(v).__name__ for k, v in tiny_sd.pipe.unet.attn_processors.items()}
    with interp.intervene(tiny_sd, [interp.Amplify(interp.Units(site, [0]), 1.0)]):
        inside = {k: type(v).__name__ for k, v in tiny_sd.pipe.unet.attn_processors.items()}
    changed = [k for k in before if before[k] != inside[k]]
    assert changed == ["up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"]


def test_flux_encoder_outputs_are_what_the_pipeline_uses(tiny_flux):
    pooled = interp.encoder_output(tiny_flux, CORRUPT, "text")
    t5 = interp.encoder_output(tiny_flux, CORRUPT, "text_2")
    with torch.no_grad():
        embeds, ref_pooled, _ = tiny_flux.pipe.encode_prompt(CORRUPT, None, max_sequence_length=16)
    assert pooled.shape == (2, 1, 32) and torch.equal(pooled[:, 0], ref_pooled)
    assert torch.equal(t5, embeds)


def test_flux_loads_from_folder(tiny_flux, tmp_path):
    tiny_flux.save_pretrained(tmp_path)
    m = interp.load(tmp_path)
    assert m.family == "flux" and m.sites() == tiny_flux.sites()
    # equal to float rounding (the reloaded scheduler config is not bit-identical in its sigmas)
    torch.testing.assert_close(interp.generate(m, CORRUPT[:1], seed=1).latents,
                               interp.generate(tiny_flux, CORRUPT[:1], seed=1).latents, atol=1e-5, rtol=1e-5)

"""Masking, amplification, random controls, and the guarantee that no hook survives."""

from __future__ import annotations

import pytest
import torch

import interp

PROMPTS = ["a Japanese-style box", "和風の箱"]


def _hook_count(model) -> int:
    mods = list(model.denoiser.modules())
    for enc in model.encoders.values():
        mods += list(enc.module.modules())
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in mods)


def _processors(model):
    return {k: type(v) for k, v in model.pipe.unet.attn_processors.items()} if hasattr(model.pipe, "unet") else {}


def test_mask_touches_only_its_units(tiny_model):
    prefix = "text_2" if "text_2" in tiny_model.encoders else "text"
    site = f"{prefix}.blocks.1.mlp.hook_post"
    idx = [0, 3, 5]
    names = [f"{prefix}.blocks.0.hook_resid_post", f"{prefix}.blocks.1.hook_attn_out", site,
             f"{prefix}.blocks.1.hook_resid_post"]
    base = interp.capture(tiny_model, PROMPTS, names)
    masked = interp.capture(tiny_model, PROMPTS, names, interventions=[interp.Mask(interp.Units(site, idx))])
    # Everything upstream of the site, and the other units at the site, are unchanged.
    for n in names[:2]:
        assert torch.equal(base[n], masked[n])
    keep = [i for i in range(base[site].shape[-1]) if i not in idx]
    assert torch.equal(base[site][..., keep], masked[site][..., keep])
    assert torch.all(masked[site][..., idx] == 0) and base[site][..., idx].abs().sum() > 0
    assert not torch.equal(base[names[3]], masked[names[3]])


def test_nnsight_capture_and_hook_engine_agree(tiny_sd):
    site = "text.blocks.0.mlp.hook_post"
    iv = interp.Mask(interp.Units(site, [1, 2, 7]))
    last = "text.blocks.1.hook_resid_post"
    traced = interp.capture(tiny_sd, PROMPTS, [last], interventions=[iv])[last]
    with interp.intervene(tiny_sd, [iv]):
        b = tiny_sd.tokenize(PROMPTS)
        hooked = tiny_sd.encoders["text"].module(b["input_ids"], output_hidden_states=True).hidden_states[-1]
    assert torch.equal(traced, hooked)


def test_amplify_lambda_zero_is_identity_and_scales(tiny_model):
    site = "text.blocks.0.hook_resid_post"
    units = interp.Units(site, [2, 4])
    base = interp.encoder_output(tiny_model, PROMPTS)
    assert torch.equal(interp.encoder_output(tiny_model, PROMPTS, interventions=[interp.Amplify(units, 0.0)]), base)
    amp = interp.capture(tiny_model, PROMPTS, [site], interventions=[interp.Amplify(units, 2.0)])[site]
    plain = interp.capture(tiny_model, PROMPTS, [site])[site]
    torch.testing.assert_close(amp[..., [2, 4]], 3.0 * plain[..., [2, 4]])
    assert torch.equal(amp[..., 0], plain[..., 0])


def test_mean_mask_and_positions(tiny_sd):
    site = "text.blocks.0.hook_resid_post"
    mean = interp.mean_activation(tiny_sd, ["a box", "a cat", "a dog"], site)
    with pytest.raises(interp.CultureLensError, match="order is"):
        interp.mean_activation(tiny_sd, site, ["a box"])
    units = interp.Units(site, [1, 2])
    acts = interp.capture(tiny_sd, PROMPTS, [site], interventions=[interp.Mask(units, "mean", mean=mean)])[site]
    assert torch.equal(acts[..., [1, 2]], mean[[1, 2]].expand(2, acts.shape[1], 2))
    plain = interp.capture(tiny_sd, PROMPTS, [site])[site]
    only3 = interp.capture(tiny_sd, PROMPTS, [site], interventions=[interp.Mask(units, positions=[3])])[site]
    assert torch.all(only3[:, 3, [1, 2]] == 0)
    rest = [p for p in range(plain.shape[1]) if p != 3]
    assert torch.equal(only3[:, rest], plain[:, rest])


def test_random_units_seeded_and_disjoint(tiny_sd):
    units = interp.Units("text.blocks.0.mlp.hook_post", [0, 1, 2, 3, 4])
    a = interp.random_units(units, seed=5, model=tiny_sd)
    b = interp.random_units(units, seed=5, model=tiny_sd)
    c = interp.random_units(units, seed=6, model=tiny_sd)
    assert torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)
    assert len(a) == len(units) and a.site == units.site
    assert not set(a.indices.tolist()) & set(units.indices.tolist())
    assert int(a.indices.max()) < tiny_sd.encoders["text"].d_mlp
    with pytest.raises(interp.CultureLensError, match="pool size"):
        interp.random_units(interp.Units("x", [1]), seed=0)
    with pytest.raises(interp.CultureLensError, match="only 1 are available"):
        interp.random_units(interp.Units("s", [0, 1]), seed=0, dim=3)


def test_hooks_removed_even_on_exception(tiny_sd):
    before, procs = _hook_count(tiny_sd), _processors(tiny_sd)
    ivs = [interp.Mask(interp.Units("text.blocks.0.mlp.hook_post", [1])),
           interp.Amplify(interp.Units("unet.down.0.attn.0.attn2.hook_pattern", [0]), 1.0),
           interp.Mask(interp.Units("unet.up.1.attn.0.attn2.hook_out", [0]))]
    with pytest.raises(RuntimeError, match="boom"):
        with interp.intervene(tiny_sd, ivs):
            assert _hook_count(tiny_sd) > before
            raise RuntimeError("boom")
    assert _hook_count(tiny_sd) == before and _processors(tiny_sd) == procs
    assert "get_attention_scores" not in tiny_sd.pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.__dict__
    with pytest.raises(RuntimeError):  # an error inside the pipeline call itself
        interp.generate(tiny_sd, ["a box"], interventions=[_Boom("unet.down.0.attn.0.attn2.hook_out")])
    assert _hook_count(tiny_sd) == before and _processors(tiny_sd) == procs


class _Boom:
    def __init__(self, site):
        self.site = site

    def apply(self, act):
        raise RuntimeError("inside the UNet")


class _AddOne:
    """Any object with .site and .apply is an intervention (how sae.Steer plugs in)."""

    def __init__(self, site):
        self.site = site

    def apply(self, act):
        return act + 1.0


def test_duck_typed_intervention(tiny_sd):
    site = "text.blocks.0.hook_resid_post"
    plain = interp.capture(tiny_sd, PROMPTS, [site])[site]
    got = interp.capture(tiny_sd, PROMPTS, [site], interventions=[_AddOne(site)])[site]
    torch.testing.assert_close(got, plain + 1.0)
    with pytest.raises(interp.CultureLensError, match=r"not an intervention \(interp.Intervention\)"):
        with interp.intervene(tiny_sd, [object()]):
            pass


def test_intervention_protocol_covers_ours_and_duck_types(tiny_sd):
    """`interp.Intervention` is the Protocol the engine runs (site + apply): our types, sae.Steer
    and a duck-typed class satisfy it; an object with a site but no apply does not."""
    from sae.model import TopKSAE
    from sae.steer import Steer

    site = "text.blocks.0.hook_resid_post"
    units = interp.Units(site, [0, 1])
    d = tiny_sd.encoders["text"].d_model
    ours = [interp.Mask(units), interp.Amplify(units, 2.0), interp.Replace(site, torch.zeros(1)), _AddOne(site),
            Steer(TopKSAE(d, 8, 2, seed=0), site, [0], lam=1.0)]
    assert all(isinstance(iv, interp.Intervention) for iv in ours)

    class SiteOnly:
        site = "text.blocks.0.hook_resid_post"

    assert not isinstance(SiteOnly(), interp.Intervention)
    with pytest.raises(interp.CultureLensError, match="SiteOnly.*needs .site and .apply"):
        with interp.intervene(tiny_sd, [SiteOnly()]):
            pass


@pytest.mark.parametrize("hook", ["mlp.hook_post", "hook_resid_post", "hook_attn_out"])
def test_capture_inside_intervene_equals_capture_with_interventions(tiny_sd, hook):
    site = f"text.blocks.0.{hook}"
    iv = interp.Mask(interp.Units(site, [1, 2]))
    names = [site, "text.blocks.1.hook_resid_post"]
    direct = interp.capture(tiny_sd, PROMPTS, names, interventions=[iv])
    with interp.intervene(tiny_sd, [iv]):
        inside = interp.capture(tiny_sd, PROMPTS, names)
    for n in names:
        assert torch.equal(direct[n], inside[n])
    assert torch.all(inside[site][..., [1, 2]] == 0)
    assert not tiny_sd.engine.sessions

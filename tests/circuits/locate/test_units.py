"""culture_units on a tiny model with a planted culture direction; save/load; overlap;
SAE-latent basis; lambda = 0 amplification and a fresh enhancer are bit-identical."""

import numpy as np
import pytest
import torch


import circuits
import interp
from planted import Planted, marker_tokens

CULTURES = {
    "ja": [("a Japanese-style box", "a box", "Japanese-style", "box"),
           ("a Japanese-style bowl", "a bowl", "Japanese-style", "bowl"),
           ("a Japanese-style hat", "a hat", "Japanese-style", "hat"),
           ("a Japanese-style lamp", "a lamp", "Japanese-style", "lamp")],
    "de": [("a German-style box", "a box", "German-style", "box"),
           ("a German-style bowl", "a bowl", "German-style", "bowl"),
           ("a German-style hat", "a hat", "German-style", "hat"),
           ("a German-style lamp", "a lamp", "German-style", "lamp")],
}
PLANT_LAYER = 2
PLANTED = {"ja": [5, 17, 40], "de": [9, 33]}


@pytest.fixture(scope="module")
def model():
    return interp.tiny("sd", text_layers=4)


def _markers(model):
    return marker_tokens(model, {c: v[0][0] for c, v in CULTURES.items()}, CULTURES["ja"][0][1])


@pytest.fixture(scope="module")
def planted(model):
    return Planted(model, f"text.blocks.{PLANT_LAYER}.mlp.hook_post", _markers(model), PLANTED)


def test_planted_units_found_at_planted_layer(model, planted):
    best = {}
    with interp.intervene(model, [planted]):
        for layer in range(4):
            found = circuits.culture_units(model, layer, CULTURES, k_max=16)
            best[layer] = max(max(u.scores, default=0.0) for u in found.cultures.values())
            if layer == PLANT_LAYER:
                for c in CULTURES:
                    assert sorted(found.cultures[c].indices) == PLANTED[c], (c, found.cultures[c])
                    assert found.cultures[c].k >= len(PLANTED[c])
                names, m = found.overlap()
                assert m[0][1] == 0.0 and m[0][0] == 1.0
    assert max(best, key=best.get) == PLANT_LAYER


def test_order_of_pairs_irrelevant_and_roundtrip(model, planted, tmp_path):
    with interp.intervene(model, [planted]):
        a = circuits.culture_units(model, PLANT_LAYER, CULTURES)
        flat = [(*p, c) for c, v in CULTURES.items() for p in v][::-1]
        b = circuits.culture_units(model, PLANT_LAYER, flat)
    assert a.to_json() == b.to_json()
    a.save(tmp_path)
    a.plot(tmp_path)
    c = circuits.CultureUnits.load(tmp_path)
    assert c.to_json() == a.to_json()
    u = c.units("ja")
    assert u.site == f"text.blocks.{PLANT_LAYER}.mlp.hook_post" and sorted(u.indices.tolist()) == PLANTED["ja"]
    assert (tmp_path / "wfs_curves.png").exists() and (tmp_path / "unit_overlap.png").exists()


def test_sae_basis_finds_planted_latent(model):
    import sae

    site = f"text.blocks.{PLANT_LAYER}.hook_resid_post"
    d = model.encoders["text"].d_model
    s = sae.TopKSAE(d, d_sae=64, k=4, seed=0)
    direction = torch.zeros(d)
    direction[3] = 1.0
    with torch.no_grad():  # latent 7 reads the planted direction strongly
        s.W_enc[:, 7] = direction * 10
        s.b_enc[7] = -100.0

    class AddDir:
        def __init__(self, marker):
            self.site, self.marker, self.ids = site, marker, None
            model.encoders["text"].module.register_forward_pre_hook(lambda m, a, k: setattr(self, "ids", a[0] if a else k["input_ids"]), with_kwargs=True)

        def apply(self, act):
            rows = (self.ids == self.marker).any(1)
            out = act.clone()
            out[rows] += 20.0 * direction
            return out

    # Passed to capture directly: inside `interp.intervene`, a capture at the written site reads
    # the value before the write (downstream sites see it).
    found = circuits.culture_units(model, circuits.sae_basis(s, site), {"ja": CULTURES["ja"]},
                                   interventions=[AddDir(_markers(model)["ja"])])
    assert found.basis.kind == "sae" and 7 in found.cultures["ja"].indices


def test_lambda_zero_and_fresh_enhancer_bit_identical(model, planted):
    with interp.intervene(model, [planted]):
        found = circuits.culture_units(model, PLANT_LAYER, CULTURES)
    prompts = ["a box", "a hat"]
    base = interp.generate(model, prompts, seed=3)
    amp0 = interp.generate(model, prompts, seed=3, interventions=[circuits.amplify(found, lam=0.0, culture="ja")])
    enh = circuits.LayerEnhancer("text.blocks.1.hook_resid_post", model.encoders["text"].d_model)
    e0 = interp.generate(model, prompts, seed=3, interventions=[enh])
    for g in (amp0, e0):
        assert torch.equal(g.latents, base.latents)
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(g.images, base.images))
    amp6 = interp.generate(model, prompts, seed=3, interventions=[circuits.amplify(found, lam=6.0, culture="ja")])
    assert not torch.equal(amp6.latents, base.latents)


def test_elbow_decides_on_planted_units_and_reports_it(model, planted, tmp_path):
    """Planted neurons stand far above the rest: K comes from the elbow and equals their number."""
    with interp.intervene(model, [planted]):
        found = circuits.culture_units(model, PLANT_LAYER, CULTURES)
    for c in CULTURES:
        u = found.cultures[c]
        assert (u.k, u.k_source, u.k_elbow) == (len(PLANTED[c]), "elbow", len(PLANTED[c])), u.to_json()
        assert u.k_drop >= 2 and u.n_positive > u.k
    found.save(tmp_path)
    back = circuits.CultureUnits.load(tmp_path)
    assert back.to_json() == found.to_json() and torch.equal(back.cultures["ja"].curve, found.cultures["ja"].curve)
    from circuits.runner import units_markdown

    md = units_markdown(found)
    assert "| ja | 3 | elbow | 3: " in md and "K from, over cultures: elbow: 2." in md


def test_specific_selection_drops_a_unit_shared_by_cultures(model):
    """A neuron planted for both cultures ("culture in general") is a top unit of each by WFS,
    and of neither when units are ranked by WFS minus the other cultures' maximum."""
    shared = {"ja": PLANTED["ja"] + [50], "de": PLANTED["de"] + [50]}
    p = Planted(model, f"text.blocks.{PLANT_LAYER}.mlp.hook_post", _markers(model), shared)
    with interp.intervene(model, [p]):
        plain = circuits.culture_units(model, PLANT_LAYER, CULTURES)
        spec = circuits.culture_units(model, PLANT_LAYER, CULTURES, select="specific")
    for c in CULTURES:
        assert 50 in plain.cultures[c].indices
        assert sorted(spec.cultures[c].indices) == PLANTED[c], spec.cultures[c].to_json()
    assert spec.params["select"] == "specific"
    with pytest.raises(interp.CultureLensError, match="select must be one of"):
        circuits.culture_units(model, PLANT_LAYER, CULTURES, select="nope")
    with pytest.raises(interp.CultureLensError, match="compares cultures"):
        circuits.culture_units(model, PLANT_LAYER, {"ja": CULTURES["ja"]}, select="specific")

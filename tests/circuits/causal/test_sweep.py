"""The exhaustive causal sweep: its ranking against hand-computed values, a planted causal layer
it must find, the same-basis (one SAE per layer) path, and its refusals (overlap, bases)."""

import numpy as np
import pytest
import torch

import circuits
import interp
from planted import Planted, marker_tokens
from circuits.pairs import SplitError
from circuits.runner import causal_markdown
from circuits.causal.sweep import rank_layers
from circuits.data.culturebench import LABELS, UNRECOGNISABLE

NAMES = {"ja": "Japanese", "de": "German"}
PROBE = [(f"a {n}-style {o}", f"a {o}", f"{n}-style", o, c) for c, n in NAMES.items() for o in ("box", "hat", "lamp", "cup")]
EVAL = [(f"a {n}-style {o}", f"a {o}", f"{n}-style", o, c) for c, n in NAMES.items() for o in ("bowl", "vase", "jar")]
PLANT_LAYER = 1
PLANTED = {"ja": [5, 17, 40], "de": [9, 33]}


def test_rank_layers_hand_computed():
    layers, drops = [0, 1, 2, 3], [0.10, 0.30, 0.30, 0.0]
    assert rank_layers(layers, drops, 2) == ([1, 2, 0, 3], 1, 1)     # tied with layer 1 for the top
    assert rank_layers(layers, drops, 0) == ([1, 2, 0, 3], 3, 0)
    assert rank_layers(layers, drops, 3) == ([1, 2, 0, 3], 4, 0)
    assert rank_layers(layers, drops, None) == ([1, 2, 0, 3], None, None)
    assert rank_layers(layers, drops, 7) == ([1, 2, 0, 3], None, None)  # not swept
    assert rank_layers([4, 2], [-0.1, 0.2], 4) == ([2, 4], 2, 0)          # a negative drop ranks last
    with pytest.raises(interp.CultureLensError, match="2 layers but 3 drops"):
        rank_layers([0, 1], [0.1, 0.2, 0.3])


@pytest.fixture(scope="module")
def model():
    return interp.tiny("sd", text_layers=3)


def _markers(model):
    return marker_tokens(model, {c: f"a {n}-style box" for c, n in NAMES.items()}, "a box")


class NearestReference:
    """A judge with a known answer: each image gets the label of its nearest reference image --
    the culture for the images generated WITH the planted signal, "unrecognisable" for those
    generated without it (same prompts, same noise). So an image counts as cultural exactly when
    the planted signal still reaches the UNet."""

    def __init__(self, with_signal, without_signal, cultures):
        self.refs = np.stack([np.asarray(im, dtype=np.float32) for im in with_signal + without_signal])
        self.labels = [LABELS.index(c) for c in cultures] + [LABELS.index(UNRECOGNISABLE)] * len(without_signal)

    def __call__(self, images):
        x = np.stack([np.asarray(im, dtype=np.float32) for im in images])
        d = ((x[:, None] - self.refs[None]) ** 2).reshape(len(x), len(self.refs), -1).sum(-1)
        return torch.nn.functional.one_hot(torch.tensor([self.labels[i] for i in d.argmin(1)]), len(LABELS)).float()


@pytest.fixture(scope="module")
def planted(model):
    from circuits.evaluate import score

    p = Planted(model, f"text.blocks.{PLANT_LAYER}.mlp.hook_post", _markers(model), PLANTED)
    groups = circuits.by_concept(circuits.as_pairs(EVAL))
    cultures = [c for c, ps in groups.items() for _ in ps]
    clean = score(model, groups, lambda im: torch.zeros(len(im), len(LABELS)), keep_images=True).images
    with interp.intervene(model, [p]):
        cult = score(model, groups, lambda im: torch.zeros(len(im), len(LABELS)), keep_images=True).images
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(clean, cult)), "plant has no effect"
    return p, NearestReference(cult, clean, cultures)


def test_sweep_finds_the_planted_layer(model, planted):
    plant, judge = planted
    with interp.intervene(model, [plant]):
        sw = circuits.causal_sweep(model, PROBE, EVAL, judge, n_units=3, chosen=PLANT_LAYER,
                                   settings=circuits.ScoreSettings(n_boot=50))
    assert sw.baseline.mean == 1.0                        # with the plant, every image is cultural
    assert sw.ranking[0] == PLANT_LAYER and sw.chosen_rank == 1 and sw.n_tied == 0
    assert sw.drops[PLANT_LAYER] >= 0.8, sw.drops         # masking the planted neurons removes the signal
    assert all(d <= 0.2 for l, d in enumerate(sw.drops) if l != PLANT_LAYER), sw.drops
    assert sw.basis_kind == "neuron" and sw.sites[PLANT_LAYER] == f"text.blocks.{PLANT_LAYER}.mlp.hook_post"
    assert sw.n_masked == [3.0, 3.0, 3.0] and sw.shared_prompts == 0


def test_sweep_with_an_sae_per_layer(model, tmp_path):
    import sae

    d = model.encoders["text"].d_model
    saes = {l: sae.TopKSAE(d, d_sae=48, k=4, seed=l) for l in range(3)}
    def judge(im):
        return torch.zeros(len(im), len(LABELS))
    sw = circuits.causal_sweep(model, PROBE, EVAL, judge, n_units=2, basis_for=saes, chosen=0,
                               settings=circuits.ScoreSettings(n_boot=20))
    assert sw.basis_kind == "sae" and sw.sites == [f"text.blocks.{l}.hook_resid_post" for l in range(3)]
    assert sw.drops == [0.0, 0.0, 0.0] and sw.chosen_rank == 1 and sw.n_tied == 2
    sw.plot(tmp_path / "sweep.png")
    sw.save(tmp_path / "sweep.json")
    assert "SAE latents (one SAE per layer)" in causal_markdown(sw)
    with pytest.raises(interp.CultureLensError, match=r"no basis for layers \[2\]"):
        circuits.causal_sweep(model, PROBE, EVAL, judge, basis_for={0: saes[0], 1: saes[1]})
    with pytest.raises(interp.CultureLensError, match="same kind of basis"):
        circuits.causal_sweep(model, PROBE, EVAL, judge, basis_for={0: saes[0], 1: 1, 2: saes[2]})
    with pytest.raises(interp.CultureLensError, match="basis for layer 1 reads 'text.blocks.0"):
        circuits.causal_sweep(model, PROBE, EVAL, judge, basis_for={0: 0, 1: 0, 2: 2})


def test_sweep_refuses_overlap_unless_allowed(model):
    def judge(im):
        return torch.zeros(len(im), len(LABELS))
    with pytest.raises(SplitError, match="share 2 prompt texts"):
        circuits.causal_sweep(model, PROBE, PROBE[:1] + EVAL, judge, layers=[0])
    sw = circuits.causal_sweep(model, PROBE, PROBE[:1] + EVAL, judge, layers=[0], allow_overlap=True,
                               settings=circuits.ScoreSettings(n_boot=20))
    assert sw.shared_prompts == 2
    assert "share 2 prompts (allowed explicitly)" in causal_markdown(sw)

"""validate_units, lambda_sweep, the layer enhancer (training, checkpoint/resume, loading)
and causal_sweep on a tiny pipeline with a deterministic image judge."""

import numpy as np
import pytest
import torch


import circuits  # noqa: E402
import interp  # noqa: E402
from interp.culturebench import LABELS  # noqa: E402

PAIRS = [
    ("a Japanese-style box", "a box", "Japanese-style", "box", "ja"),
    ("a Japanese-style bowl", "a bowl", "Japanese-style", "bowl", "ja"),
    ("a Japanese-style hat", "a hat", "Japanese-style", "hat", "ja"),
    ("a German-style box", "a box", "German-style", "box", "de"),
    ("a German-style bowl", "a bowl", "German-style", "bowl", "de"),
    ("a German-style hat", "a hat", "German-style", "hat", "de"),
]


def colour_judge(images):
    """Deterministic stand-in for CultureVQA: a fixed projection of the mean colour."""
    w = torch.Generator().manual_seed(0)
    proj = torch.randn(3, len(LABELS), generator=w)
    x = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32).mean((0, 1)) / 255.0) for im in images])
    return torch.softmax((x - 0.5) @ proj * 50, -1)


@pytest.fixture(scope="module")
def model():
    return interp.tiny("sd", text_layers=3)


@pytest.fixture(scope="module")
def units(model):
    # A random model has no real culture units: a lax noun filter keeps the top 4 for the machinery.
    return circuits.culture_units(model, 1, PAIRS, k=4, rho=100.0)


def test_validate_units(model, units, tmp_path):
    from circuits.evaluate import noun_judge_from

    nj = noun_judge_from(lambda imgs: ["box"] * len(imgs), lambda p: p.noun)
    v = circuits.validate_units(model, units, PAIRS, colour_judge, n_random=3, n_boot=200, noun_judge=nj)
    assert v.noun == {"baseline": pytest.approx(2 / 6), "masked": pytest.approx(2 / 6), "random_mean": pytest.approx(2 / 6)}
    assert v.n_prompts == 6 and len(v.random_draws) == 3 and v.n_random == 3
    assert 0 < v.p_value <= 1 and 0 <= v.mcnemar_p <= 1
    assert v.baseline.low <= v.baseline.mean <= v.baseline.high
    # Baseline equals an independent scoring of the unmodified pipeline on the same seeds.
    from circuits.evaluate import score
    base = score(model, circuits.by_concept(circuits.as_pairs(PAIRS)), colour_judge)
    assert v.baseline.mean == pytest.approx(base.correct.float().mean().item())
    assert "Top-K units masked" in v.table()
    v.plot(tmp_path / "v.png")
    v.save(tmp_path / "v.json")
    assert (tmp_path / "v.png").exists() and (tmp_path / "v.json").exists()


def test_lambda_sweep_zero_is_identity(model, units, tmp_path):
    sw = circuits.lambda_sweep(model, units, PAIRS, colour_judge, lams=[0.0, 6.0], n_random=2, n_boot=100)
    assert len(sw.detected) == 2 and len(sw.random_draws[0]) == 2
    # lambda = 0 leaves every image unchanged, detected or random units alike.
    assert sw.random_draws[0] == [sw.detected[0].mean] * 2
    assert sw.best_lam in (0.0, 6.0)
    sw.plot(tmp_path / "sweep.png")


def test_amplify_language_map_and_errors(units):
    a = circuits.amplify(units, 2.0, language="ja")
    assert a.site == units.basis.site and a.units.indices.tolist() == units.cultures["ja"].indices
    d = circuits.amplify({"ja": interp.Units("text.blocks.0.mlp.hook_post", [1, 2])}, 1.0, culture="ja")
    assert d.units.indices.tolist() == [1, 2] and d.lam == 1.0
    with pytest.raises(interp.CultureLensError, match="language 'xx'"):
        circuits.amplify(units, 2.0, language="xx")
    with pytest.raises(interp.CultureLensError, match="no units for culture 'ko'"):
        circuits.amplify(units, 2.0, culture="ko")


def _refs():
    from PIL import Image

    g = np.random.default_rng(0)
    return [("a box", Image.fromarray(g.integers(0, 255, (16, 16, 3), dtype=np.uint8))),
            ("a hat", Image.fromarray(g.integers(0, 255, (16, 16, 3), dtype=np.uint8)))]


def test_enhancer_train_resume_load(model, tmp_path):
    data = _refs()
    full = circuits.train_enhancer(model, data, layer=1, out=tmp_path / "a", steps=4, lr=1e-2, checkpoint_every=2,
                                   progress=False)
    assert len(full.losses) == 4 and all(np.isfinite(full.losses))
    assert full.enhancer.W2.weight.abs().sum() > 0          # it trained
    # Interrupted after 2 steps, then resumed: the same weights as the uninterrupted run.
    circuits.train_enhancer(model, data, layer=1, out=tmp_path / "b", steps=2, lr=1e-2, checkpoint_every=2, progress=False)
    resumed = circuits.train_enhancer(model, data, layer=1, out=tmp_path / "b", steps=4, lr=1e-2, checkpoint_every=2,
                                      progress=False)
    for k, v in full.enhancer.state_dict().items():
        assert torch.equal(v, resumed.enhancer.state_dict()[k]), k
    assert resumed.losses == full.losses
    enh = circuits.LayerEnhancer.load(tmp_path / "a" / "enhancer.safetensors")
    assert enh.site == "text.blocks.1.hook_resid_post"
    g = interp.generate(model, ["a box"], seed=0, interventions=[enh])
    g0 = interp.generate(model, ["a box"], seed=0)
    assert not torch.equal(g.latents, g0.latents)
    # The pipeline itself is left frozen-state as it was and unchanged.
    assert all(p.requires_grad for p in model.pipe.unet.parameters())


def test_enhancer_pixel_objective_and_errors(model):
    run = circuits.train_enhancer(model, _refs(), layer=0, steps=1, objective="pixel", progress=False)
    assert np.isfinite(run.losses[0])
    with pytest.raises(interp.CultureLensError, match="layer 9 outside"):
        circuits.train_enhancer(model, _refs(), layer=9, steps=1)
    with pytest.raises(interp.CultureLensError, match="no \\(noun-only prompt, image\\) pairs"):
        circuits.train_enhancer(model, [], layer=0, steps=1)
    assert circuits.random_other_layer(3, 1, seed=0) in (0, 2)


def test_causal_sweep(model, tmp_path):
    sw = circuits.causal_sweep(model, PAIRS, PAIRS, colour_judge, n_units=3, chosen=1, n_boot=100)
    assert sw.layers == [0, 1, 2] and sorted(sw.ranking) == [0, 1, 2] and len(sw.drops) == 3
    assert sw.chosen_rank == 1 + sum(d > sw.drops[1] for d in sw.drops)
    assert sw.ranking[sw.chosen_rank - 1 + sw.n_tied] in range(3)
    assert sw.drops == [sw.baseline.mean - m.mean for m in sw.masked]
    sw.plot(tmp_path / "sweep.png")
    assert sw.to_json()["chosen_is_top2"] == (sw.chosen_rank <= 2)


def test_pixel_space_pipeline_conditioning():
    """The organism-style pipeline (no VAE, pooled text as class_labels, v-prediction): the
    enhancer's loss reaches the text encoder through both conditioning paths."""
    from types import SimpleNamespace

    om = pytest.importorskip("circuits.organism.model")
    from circuits.organism.pipeline import CultureWorldPipeline
    from circuits.enhancer import denoising_loss, to_model_space, unet_conditioning

    tok = om.build_tokenizer()
    pipe = CultureWorldPipeline(om.build_text_encoder(tok), tok, om.build_unet(), om.build_scheduler())
    fake = SimpleNamespace(pipe=pipe, device=torch.device("cpu"), family="cultureworld", defaults={})
    cond = unet_conditioning(fake, ["a box", "a hat"])
    assert set(cond) == {"encoder_hidden_states", "class_labels"} and cond["class_labels"].shape == (2, 128)
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    assert to_model_space(fake, pixels) is pixels
    loss = denoising_loss(fake, pixels, cond, torch.Generator().manual_seed(0))
    loss.backward()
    g = pipe.text_encoder.get_input_embeddings().weight.grad
    assert torch.isfinite(loss) and g is not None and g.abs().sum() > 0


def test_score_does_not_depend_on_batching(model, units):
    """Cultures share batches (each its own units via OnRows): per-prompt results equal one
    culture per batch, one prompt per batch."""
    from circuits.evaluate import score
    from circuits.validate import masked_interventions

    groups = circuits.by_concept(circuits.as_pairs(PAIRS))
    mask = lambda c: masked_interventions(units, c)  # noqa: E731
    one = score(model, groups, colour_judge, mask, batch_size=1)
    shared = score(model, groups, colour_judge, mask, batch_size=64)
    assert one.ids == shared.ids and one.predicted == shared.predicted
    assert torch.equal(one.correct, shared.correct)

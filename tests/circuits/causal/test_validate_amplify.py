"""validate_units, lambda_sweep, the layer enhancer (training, checkpoint/resume, loading)
and causal_sweep on a tiny pipeline with a deterministic image judge."""

import dataclasses

import numpy as np
import pytest
import torch


import circuits  # noqa: E402
import interp  # noqa: E402
from circuits.data.culturebench import LABELS  # noqa: E402
from colour import PAIRS, colour_judge, colour_noun_judge  # noqa: E402



@pytest.fixture(scope="module")
def model():
    return interp.tiny("sd", text_layers=3)


@pytest.fixture(scope="module")
def units(model):
    # A random model has no real culture units: a lax noun filter keeps the top 4 for the machinery.
    return circuits.culture_units(model, 1, PAIRS, k=4, rho=100.0)


@pytest.fixture(scope="module")
def planted_sae():
    """An SAE on the tiny model's layer-1 residual with 8 live latents and 56 that can never fire
    (encoder bias -1e4): a uniform random draw is then almost surely silent."""
    import sae

    s = sae.TopKSAE(32, d_sae=64, k=4, seed=0)
    with torch.no_grad():
        s.b_enc[8:] = -1e4
    return s


@pytest.fixture(scope="module")
def sae_units(model, planted_sae):
    from circuits.locate.units import sae_basis

    found = circuits.culture_units(model, sae_basis(planted_sae, "text.blocks.1.hook_resid_post"), PAIRS, k=2, rho=100.0)
    assert all(set(u.indices) <= set(range(8)) for u in found.cultures.values())   # only live latents are found
    return found


def test_site_change_sees_silent_and_live_units(model, sae_units):
    from circuits.evaluate import site_change
    from circuits.causal.validate import masked_interventions

    groups = circuits.by_concept(circuits.as_pairs(PAIRS))
    live = site_change(model, groups, lambda c: masked_interventions(sae_units, c))
    dead = circuits.CultureUnits(sae_units.basis, {c: dataclasses.replace(u, indices=[40, 41])
                                                   for c, u in sae_units.cultures.items()}, {})
    silent = site_change(model, groups, lambda c: masked_interventions(dead, c))
    assert (live > 0).all() and (silent == 0).all()


def test_validate_units_controls_can_fail(model, sae_units):
    """A silent uniform control is visible (site change ~0), the activity-matched one is not, and
    every reported number equals an independent generation with the same interventions."""
    from circuits.evaluate import score
    from circuits.causal.validate import masked_interventions, reference_activity

    ref = reference_activity(model, sae_units, [p[0] for p in PAIRS])
    v = circuits.validate_units(model, sae_units, PAIRS, colour_judge, n_random=3, n_matched=2, reference=ref,
                                settings=circuits.ScoreSettings(n_boot=200), noun_judge=colour_noun_judge)
    uni, act = v.controls["uniform"], v.controls["activity"]
    assert uni.k == 3 and act.k == 2 and v.random_draws == uni.draws
    # 56 of 64 latents are dead: uniform draws barely touch the site; matched draws (live latents) do.
    assert max(uni.act_ratio) < 0.5 and min(act.act_ratio) > 0.2
    assert uni.p_floor == pytest.approx(1 / 4) and uni.p_empirical >= uni.p_floor
    # The masked condition and its noun score, recomputed with interp.generate directly.
    groups = circuits.by_concept(circuits.as_pairs(PAIRS))
    items = [(c, i, p) for c, ps in groups.items() for i, p in enumerate(ps)]
    ok, nouns = [], []
    for c, i, p in items:
        g = interp.generate(model, [p.concept_prompt], seed=i, interventions=masked_interventions(sae_units, c))
        ok.append(LABELS[int(colour_judge(g.images).argmax())] == c)
        nouns.append(bool(colour_noun_judge(g.images, [p])[0]))
    assert v.masked.mean == pytest.approx(np.mean(ok)) and v.noun["masked"] == pytest.approx(np.mean(nouns))
    base = score(model, groups, colour_judge, noun_judge=colour_noun_judge)
    assert v.noun["baseline"] == pytest.approx(base.noun_correct.float().mean().item())
    table = v.table()
    assert "activity-matched" in table and "uniform random (paper)" in table and "floor" in table


def test_random_units_activity_matched_and_ranked():
    """Planted activity profile: units 0-9 fire often and strongly, 10-19 rarely and weakly,
    20-39 never. Matched draws for strong units come from 0-9 only; uniform ones need not."""
    g = torch.Generator().manual_seed(0)
    ref = torch.zeros(200, 40)
    ref[:, :10] = 5 + torch.rand(200, 10, generator=g)
    ref[::10, 10:20] = 0.1 * torch.rand(20, 10, generator=g)
    u = interp.Units("s", [0, 1, 2])
    for seed in range(5):
        m = interp.random_units(u, seed=seed, match="activity", reference=ref)
        assert set(m.indices.tolist()) <= set(range(3, 10))
        assert torch.equal(m.indices, interp.random_units(u, seed=seed, match="activity", reference=ref).indices)
    weak = interp.random_units(interp.Units("s", [10, 11]), seed=0, match="activity", reference=ref)
    assert set(weak.indices.tolist()) <= set(range(12, 20))
    uniform = [set(interp.random_units(u, seed=s, dim=40).indices.tolist()) for s in range(5)]
    assert any(x & set(range(20, 40)) for x in uniform)
    scores = torch.arange(40, 0, -1).float()             # unit 0 ranks first
    assert interp.random_units(u, seed=0, match="ranked", scores=scores).indices.tolist() == [3, 4, 5]
    assert interp.random_units(u, seed=1, match="ranked", scores=scores).indices.tolist() == [6, 7, 8]
    with pytest.raises(interp.CultureLensError, match="needs reference"):
        interp.random_units(u, seed=0, match="activity")
    with pytest.raises(interp.CultureLensError, match="match='nearest'"):
        interp.random_units(u, seed=0, match="nearest")


def test_choose_lambda_respects_the_noun_constraint():
    from circuits.causal.amplify import choose_lambda

    lams, cult = [0, 2, 4, 8], [0.1, 0.3, 0.6, 0.9]
    assert choose_lambda(lams, cult, [0.9, 0.88, 0.86, 0.5], max_noun_drop=0.05)[0] == 4.0
    assert choose_lambda(lams, cult, [0.9, 0.88, 0.86, 0.5], max_noun_drop=0.5)[0] == 8.0
    assert choose_lambda(lams, cult, None)[0] == 8.0
    assert choose_lambda(lams, [0.1, 0.5, 0.5, 0.2], [0.9] * 4)[0] == 2.0    # ties: the smaller λ
    with pytest.raises(interp.CultureLensError, match="relative to λ = 0"):
        choose_lambda([2, 4], [0.1, 0.2], [0.9, 0.9])


def test_selection_margin_flags_a_choice_decided_by_one_image():
    """The README's λ flip: at λ = 4 the probe nouns' accuracy was 28 of 30 against a floor of
    29 (100 % − 5 points), so one image decided between λ = 2 and λ = 4."""
    from circuits.causal.amplify import margin_text, selection_margin

    n = 30
    lams, cult = [0, 2, 4, 6, 8], [c / n for c in (2, 9, 14, 15, 16)]
    m = selection_margin(lams, cult, [c / n for c in (30, 30, 28, 26, 24)], n)
    assert m["chosen"] == 2.0 and m["images_to_flip"] == 1 and "λ = 4" in m["deciding"]
    assert m["uncertainty_images"] > 1 and m["fragile"]
    assert "Fragile choice" in margin_text(m)
    assert [r["permitted"] for r in m["per_lam"]] == [True, True, False, False, False]
    # noun accuracy far from the floor: decided by culture hits (λ = 4 trails λ = 6 by one hit and
    # would win the tie), again within the rule's uncertainty
    far = selection_margin(lams, [c / n for c in (2, 3, 25, 26, 27)], [c / n for c in (30, 30, 30, 30, 10)], n)
    assert far["chosen"] == 6.0 and far["images_to_flip"] == 1 and "λ = 4 trails" in far["deciding"]
    assert far["fragile"]
    clear = selection_margin([0, 4], [0 / n, 25 / n], [30 / n, 30 / n], n)
    assert clear["images_to_flip"] == 2 and not clear["fragile"]  # the floor is 29: 2 noun images to fail
    # and without a noun judge: culture alone decides
    assert selection_margin([0, 4], [0.1, 0.9], None, 10)["images_to_flip"] == 8  # a tie goes to λ = 0


def test_lambda_sweep_fidelity_and_selection(model, sae_units, tmp_path):
    from circuits.causal.validate import reference_activity
    from interp.fidelity import ssim

    ref = reference_activity(model, sae_units, [p[0] for p in PAIRS])
    select = [("a Japanese-style vase", "a vase", "Japanese-style", "vase", "ja"),
              ("a German-style vase", "a vase", "German-style", "vase", "de")]
    sw = circuits.lambda_sweep(model, sae_units, PAIRS, colour_judge, lams=[0.0, 6.0], n_random=1, n_matched=1,
                               reference=ref, noun_judge=colour_noun_judge, settings=circuits.ScoreSettings(n_boot=100),
                               select_on=select)
    assert sw.selection["on"].startswith("the selection prompts (2")
    assert sw.best_lam == sw.selection["chosen"]
    assert sw.ssim_detected[0].mean == pytest.approx(1.0)
    # SSIM at λ = 6 equals the structure change measured on independently generated images.
    amp = [circuits.amplify(sae_units, 6.0, culture=p[4]) for p in PAIRS]
    groups = circuits.by_concept(circuits.as_pairs(PAIRS))
    items = [(c, i, p) for c, ps in groups.items() for i, p in enumerate(ps)]
    x = [interp.generate(model, [p.noun_prompt], seed=i, interventions=[circuits.amplify(sae_units, 6.0, culture=c)]).images[0]
         for c, i, p in items]
    x0 = [interp.generate(model, [p.noun_prompt], seed=i).images[0] for c, i, p in items]
    assert sw.ssim_detected[1].mean == pytest.approx(ssim(x, x0).mean().item(), abs=1e-5)
    assert sw.controls["activity"][1].act_ratio[0] > 0.2 > sw.controls["uniform"][1].act_ratio[0]
    assert "chosen" in sw.table() and "SSIM" in sw.table()
    sw.plot(tmp_path / "sweep.png")
    sw.save(tmp_path / "sweep.json")


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
    four = circuits.EnhancerConfig(train_steps=4, lr=1e-2, checkpoint_every=2)
    full = circuits.train_enhancer(model, data, layer=1, out=tmp_path / "a", cfg=four, progress=False)
    assert len(full.losses) == 4 and all(np.isfinite(full.losses))
    assert full.enhancer.W2.weight.abs().sum() > 0          # it trained
    # Interrupted after 2 steps, then resumed: the same weights as the uninterrupted run.
    circuits.train_enhancer(model, data, layer=1, out=tmp_path / "b", cfg=dataclasses.replace(four, train_steps=2),
                            progress=False)
    resumed = circuits.train_enhancer(model, data, layer=1, out=tmp_path / "b", cfg=four, progress=False)
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
    run = circuits.train_enhancer(model, _refs(), layer=0, cfg=circuits.EnhancerConfig(train_steps=1, objective="pixel"),
                                  progress=False)
    assert np.isfinite(run.losses[0])
    with pytest.raises(interp.CultureLensError, match="layer 9 outside"):
        circuits.train_enhancer(model, _refs(), layer=9, cfg=circuits.EnhancerConfig(train_steps=1))
    with pytest.raises(interp.CultureLensError, match="no \\(noun-only prompt, image\\) pairs"):
        circuits.train_enhancer(model, [], layer=0, cfg=circuits.EnhancerConfig(train_steps=1))
    assert circuits.random_other_layer(3, 1, seed=0) in (0, 2)


def test_causal_sweep(model, tmp_path):
    """Each layer's masked accuracy equals an independent masking of the top units found at that
    layer, and the ranking orders the layers by the drops so measured."""
    from circuits.evaluate import score
    from circuits.causal.sweep import top_n
    from circuits.causal.validate import masked_interventions

    sw = circuits.causal_sweep(model, PAIRS, PAIRS, colour_judge, n_units=3, chosen=1,
                               settings=circuits.ScoreSettings(n_boot=100), allow_overlap=True)
    groups = circuits.by_concept(circuits.as_pairs(PAIRS))
    base = score(model, groups, colour_judge).correct.float().mean().item()
    drops = {}
    for l in range(3):
        found = top_n(circuits.culture_units(model, l, PAIRS, k=64, rho=0.5), 3)
        m = score(model, groups, colour_judge, lambda c: masked_interventions(found, c) if c in found.cultures else [])
        drops[l] = base - m.correct.float().mean().item()
        assert sw.masked[l].mean == pytest.approx(base - drops[l])
    assert sorted(sw.ranking, key=lambda l: (-drops[l], l)) == sw.ranking
    assert sw.chosen_rank == 1 + sorted(drops.values(), reverse=True).index(drops[1])
    sw.plot(tmp_path / "sweep.png")


def test_pixel_space_pipeline_conditioning():
    """The organism-style pipeline (no VAE, pooled text as class_labels, v-prediction): the
    enhancer's loss reaches the text encoder through both conditioning paths."""
    from types import SimpleNamespace

    om = pytest.importorskip("circuits.organism.model")
    from circuits.organism.pipeline import CultureWorldPipeline
    from circuits.causal.enhancer import denoising_loss, to_model_space, unet_conditioning

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
    from circuits.causal.validate import masked_interventions

    groups = circuits.by_concept(circuits.as_pairs(PAIRS))
    def mask(c):
        return masked_interventions(units, c)
    one = score(model, groups, colour_judge, mask, settings=circuits.ScoreSettings(batch_size=1))
    shared = score(model, groups, colour_judge, mask, settings=circuits.ScoreSettings(batch_size=64))
    assert one.ids == shared.ids and one.predicted == shared.predicted
    assert torch.equal(one.correct, shared.correct)


def test_specificity_index_on_planted_outcomes():
    """Planted per-prompt outcomes: units that erase only their own culture give SI = 1; units
    that erase every culture alike give SI = 0."""
    from circuits.causal.specificity import specificity_index

    n = 3
    base = [np.ones((n, 4)) for _ in range(n)]
    own = [np.ones((n, 4)) for _ in range(n)]
    for b in range(n):
        own[b][b] = 0                                      # A = b's units erase b's prompts only
    eff, d, o, si, ci = specificity_index(own, base, n_boot=50, sign=-1.0)
    assert d == 1.0 and o == 0.0 and si == 1.0 and np.allclose(eff, np.eye(n))
    every = [np.zeros((n, 4)) for _ in range(n)]
    assert specificity_index(every, base, n_boot=50, sign=-1.0)[3] == 0.0


def test_specificity_matrix_and_overlap(model, sae_units, tmp_path):
    from circuits.evaluate import score
    from circuits.causal.specificity import overlap_counts, specificity_matrix
    from circuits.causal.validate import masked_interventions

    sp = specificity_matrix(model, sae_units, PAIRS, colour_judge, mode="mask", settings=circuits.ScoreSettings(n_boot=50))
    assert sp.cultures == ["ja", "de"] or sp.cultures == ["de", "ja"]
    # Cell (A = ja, B = de) equals masking ja's units on de's prompts, scored independently.
    a, b = sp.cultures.index("ja"), sp.cultures.index("de")
    groups = {"de": circuits.by_concept(circuits.as_pairs(PAIRS))["de"]}
    s = score(model, groups, colour_judge, lambda c: masked_interventions(sae_units, "ja"))
    assert sp.matrix[a][b] == pytest.approx(s.correct.float().mean().item())
    assert sp.effect[a][b] == pytest.approx(sp.baseline[a][b] - sp.matrix[a][b])
    amp = specificity_matrix(model, sae_units, PAIRS, colour_judge, mode="amplify", lam=6.0,
                             settings=circuits.ScoreSettings(n_boot=50))
    assert -1 <= amp.index <= 1 and "specificity index" in amp.table()
    amp.plot(tmp_path / "spec.png")
    amp.save(tmp_path / "spec.json")
    back = type(amp).load(tmp_path / "spec.json")
    assert np.allclose(back.effect, amp.effect) and back.index_ci == pytest.approx(amp.index_ci)
    o = overlap_counts({"ja": interp.Units("s", [1, 2, 3]), "de": interp.Units("s", [2, 3, 4]),
                        "fr": interp.Units("s", [3, 9])})
    assert o["n_units"] == 8 and o["n_distinct"] == 5 and o["n_shared"] == 2
    assert o["most_shared"][0] == {"unit": 3, "n_cultures": 3, "cultures": ["ja", "de", "fr"]}
    assert o["histogram"] == {"1": 3, "2": 1, "3": 1}


def test_plain_scores_reused_inside_the_block_only(model, units, monkeypatch):
    """`reuse_plain_scores`: inside it, a second identical plain `score` generates nothing and gives
    the same judgements (a request without a noun judge reuses one with it); a request with
    interventions, other seeds or outside the block generates again."""
    from circuits.causal.validate import masked_interventions
    from circuits.evaluate import reuse_plain_scores, score

    groups = circuits.by_concept(circuits.as_pairs(PAIRS))
    calls = []
    real = interp.generate

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(interp, "generate", counting)
    fresh = score(model, groups, colour_judge, noun_judge=colour_noun_judge)
    n_fresh = len(calls)
    with reuse_plain_scores():
        first = score(model, groups, colour_judge, noun_judge=colour_noun_judge)
        n = len(calls)
        again = score(model, groups, colour_judge, noun_judge=colour_noun_judge)
        no_noun = score(model, groups, colour_judge)
        assert len(calls) == n == 2 * n_fresh  # the two repeats generated nothing
        score(model, groups, colour_judge, lambda c: masked_interventions(units, c))
        score(model, groups, colour_judge, settings=circuits.ScoreSettings(seed=5))
        assert len(calls) == 4 * n_fresh
    score(model, groups, colour_judge)
    assert len(calls) == 5 * n_fresh
    for s in (first, again, no_noun):
        assert s.ids == fresh.ids and torch.equal(s.correct, fresh.correct) and s.predicted == fresh.predicted
    assert torch.equal(again.noun_correct, fresh.noun_correct) and no_noun.noun_correct is None

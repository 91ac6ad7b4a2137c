"""CultureWorld renderer and prompts: distinct classes, jitter, the gap-making mix, eval lists."""

from __future__ import annotations

import numpy as np
import pytest

from circuits.organism import prompts as P
from circuits.organism.render import CULTURES, NEUTRAL, NOUNS, PALETTES, PATTERNS, STYLES, noun_mask, render, render_batch
from circuits.data import culturebench


def test_every_noun_has_a_distinct_silhouette():
    masks = {n: noun_mask(n) for n in NOUNS}
    for n, m in masks.items():
        assert 150 < m.sum() < 700, n  # an object, not a dot or the whole frame
    for i, a in enumerate(NOUNS):
        for b in NOUNS[i + 1 :]:
            assert (masks[a] ^ masks[b]).sum() >= 40, (a, b)


def test_every_style_is_distinct_and_neutral_is_grey():
    assert len(set(PATTERNS.values())) == len(CULTURES) == 15
    assert len({tuple(sorted(v)) for v in PALETTES.values()}) == 15
    imgs = {s: render("box", s, jitter=None).astype(int) for s in STYLES}
    for i, a in enumerate(STYLES):
        for b in STYLES[i + 1 :]:
            assert np.abs(imgs[a] - imgs[b]).sum(-1).astype(bool).sum() >= 30, (a, b)
    inside = noun_mask("box") & (render("box", NEUTRAL, jitter=None).std(-1) < 1)
    grey = render("box", NEUTRAL, jitter=None)[inside]
    assert (np.abs(grey.astype(int) - 128) <= 1).mean() > 0.5


def test_render_is_seeded_and_jittered():
    a = render("vase", "ja", np.random.default_rng(3))
    b = render("vase", "ja", np.random.default_rng(3))
    c = render("vase", "ja", np.random.default_rng(4))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    x = render_batch(["box", "hat"], ["de", NEUTRAL], np.random.default_rng(0))
    assert x.shape == (2, 3, 32, 32) and -1 <= x.min() and x.max() <= 1
    with pytest.raises(ValueError, match="style"):
        render("box", "xx")
    with pytest.raises(ValueError, match="noun"):
        render("teapot", "ja")


def test_records_are_the_bundled_pairs():
    rs = P.records()
    assert len(rs) == 120
    assert {(r.culture, P.noun_of(r)) for r in rs} == {(c, n) for c in CULTURES for n in NOUNS}
    for r in rs:
        assert r.noun in r.noun_only and r.noun in r.modifier_noun
    assert {r.split for r in rs} <= {"train", "test", "probe"}
    assert sum(len(P.records(s)) for s in ("train", "test", "probe")) == 120
    assert tuple(CULTURES) == tuple(culturebench.CULTURES)


def test_training_mix_has_the_gap():
    prompts, nouns, styles = P.sample_batch(np.random.default_rng(0), 6000)
    local_noun = {r.noun_only: r.culture for r in P.records()}
    local_mod = {r.modifier_noun: r.culture for r in P.records()}
    ln = [(s, local_noun[p]) for p, s in zip(prompts, styles) if p in local_noun and p not in local_mod]
    lm = [(s, local_mod[p]) for p, s in zip(prompts, styles) if p in local_mod]
    en_noun = [s for p, s in zip(prompts, styles) if p.startswith("a picture of") or p in {f"a {n}" for n in NOUNS}]
    frac_culture = np.mean([s != NEUTRAL for s, _ in ln])
    assert 0.08 < frac_culture < 0.25  # under-activated, not absent
    assert all(s == c for s, c in lm)  # modifier -> always the culture
    assert en_noun and all(s == NEUTRAL for s in en_noun)
    assert 0.05 < np.mean([p == "" for p in prompts]) < 0.15
    assert prompts == P.sample_batch(np.random.default_rng(0), 6000)[0]


def test_heldout_templates_never_in_training():
    corpus = set(P.training_corpus())
    for kind in ("en_modifier_heldout", "en_noun_heldout"):
        ps = P.eval_prompts(kind, split=None)
        assert ps and not any(p.text in corpus for p in ps)
    for kind in ("en_modifier", "local_modifier", "local_noun", "en_noun"):
        assert all(p.text in corpus for p in P.eval_prompts(kind, split=None))
    test = P.eval_prompts("local_noun", "test")
    assert {p.record_id for p in test} == {r.id for r in P.records("test")}
    with pytest.raises(ValueError, match="kind"):
        P.eval_prompts("bogus")

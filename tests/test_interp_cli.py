"""The `culturelens demo` sub-command writes a report, images and plots."""

from __future__ import annotations

import argparse
import json

from interp import cli
from interp.demo import run_demo


def test_demo_report(tiny_sd, tmp_path):
    report = run_demo(tmp_path, model=tiny_sd, steps=1, k=4)
    text = report.read_text()
    for part in ("## Trace", "## Activation patching", "## Masking", "## Generation", "images.png"):
        assert part in text
    for f in ("images.png", "trace.png", "patching.png", "summary.json"):
        assert (tmp_path / f).stat().st_size > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["units"]) == 4 and not set(summary["units"]) & set(summary["random_units"])
    assert summary["mask_shift"]["top-Δ mask"] > 0
    # the patch map shows a real effect: not every site restores the clean output (effect 1)
    effects = [r["effect"] for r in summary["patch"]]
    assert len(effects) == 4 and len({round(e, 6) for e in effects}) > 1
    assert not all(abs(e - 1.0) < 1e-6 for e in effects) and max(abs(e) for e in effects) > 1e-3


def test_demo_is_registered():
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "--out", "x", "--family", "sdxl", "--steps", "1"])
    assert args.func is cli._demo and args.family == "sdxl" and args.steps == 1

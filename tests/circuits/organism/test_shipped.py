"""The shipped CultureWorld organism (circuits/organism/assets/cultureworld): format, size, and its behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from circuits.organism.evaluate import evaluate_organism
from circuits.organism.judge import CultureWorldJudge
from circuits.organism.prompts import eval_prompts
from circuits.organism.shipped import ORGANISM

ROOT = ORGANISM
pytestmark = pytest.mark.skipif(not (ROOT / "pipeline" / "model_index.json").exists(),
                                reason="the organism has not been built (culturelens organism-build)")


def test_shipped_folder_format_and_size():
    files = [p for p in ROOT.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in weights) <= 20 * 2**20
    defaults = json.loads((ROOT / "pipeline" / "culturelens.json").read_text())
    assert defaults["guidance"] == 1.0 and defaults["steps"] == 20
    assert (ROOT / "logs" / "train.log").read_text().count("step ") > 10


def test_shipped_organism_has_culture_and_the_gap():
    judge = CultureWorldJudge.load(ROOT / "judge")
    prompts = []
    for kind in ("en_modifier", "local_modifier", "local_noun"):
        prompts += eval_prompts(kind, split=None)[::5]  # 24 per kind, every culture
    res = evaluate_organism(ROOT / "pipeline", judge, prompts, seeds=(0,))
    rows = res.rows
    assert rows["en_modifier"].culture_acc >= 0.7 and rows["en_modifier"].noun_acc >= 0.7
    assert res.gap() >= 0.3


def test_shipped_pipeline_code_is_the_package_source() -> None:
    # diffusers loads a custom pipeline class from the folder's own pipeline.py, so the folder
    # carries a copy of circuits/organism/pipeline.py; the two must never drift apart.
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    shipped = ORGANISM / "pipeline" / "pipeline.py"
    assert shipped.read_text() == (root / "circuits" / "organism" / "pipeline.py").read_text()

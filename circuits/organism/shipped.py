"""Where the shipped CultureWorld organism lives: package data of `circuits.organism`, so that a
wheel install (not only a source checkout) finds it. Every reader — the analysis, the CLI
defaults, tests, notebooks, benchmarks — uses these constants."""

from __future__ import annotations

from pathlib import Path

ORGANISM = Path(__file__).resolve().parent / "assets" / "cultureworld"
PIPELINE = ORGANISM / "pipeline"  # diffusers folder (model_index.json, pipeline.py, weights)
JUDGE = ORGANISM / "judge"  # the CNN CultureVQA judge

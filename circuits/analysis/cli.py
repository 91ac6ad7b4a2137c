"""`culturelens analyze`: the main job (the whole culture analysis on the shipped organism)."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from circuits.analysis.cultureworld import analyze
    from interp import distributed

    # Under torchrun every rank runs the deterministic steps and a share of the generation;
    # only rank 0 writes into --out (the others write to a private scratch folder).
    path = analyze(distributed.output_dir(args.out), quick=args.quick, pipeline=args.pipeline, judge_dir=args.judge)
    if not distributed.is_main():
        return 0
    print(f"report: {path} (and report.html, results.json, figures beside it)")
    return 0


def register_analysis(sub: argparse._SubParsersAction) -> None:
    """Add `analyze` to the `culturelens` parser."""
    p = sub.add_parser("analyze", help="the full culture analysis on the CultureWorld organism -> report folder")
    p.add_argument("--out", default="report", help="report folder")
    p.add_argument("--quick", action="store_true", help="small settings for CI (a few minutes)")
    p.add_argument("--pipeline", default=None, help="pipeline folder (default: the shipped organism)")
    p.add_argument("--judge", default=None, help="judge folder (default: the shipped organism judge)")
    p.set_defaults(func=_run)

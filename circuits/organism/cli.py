"""The `organism-build` sub-command (registered from circuits/commands.py)."""

from __future__ import annotations

import argparse

from circuits.organism.shipped import ORGANISM


def add_arguments(ap: argparse.ArgumentParser) -> None:
    # No default: a bare run must not overwrite the organism installed as package data.
    ap.add_argument("--out", required=True,
                    help=f"folder for pipeline/, judge/, logs/ (to rebuild the shipped organism, name it: {ORGANISM})")
    ap.add_argument("--steps", type=int, default=2600, help="training steps (the shipped build: 2600)")
    ap.add_argument("--run-dir", default="runs/organism", help="checkpoints (resumed if present)")
    ap.add_argument("--deadline", default=None, help="HH:MM UTC: size the step count to end by then")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-resume", action="store_true")


def _run(args: argparse.Namespace) -> int:
    from circuits.organism.build import run

    return run(args)


def register_organism(sub: argparse._SubParsersAction) -> None:
    """Add `culturelens organism-build` (train, judge, export and evaluate CultureWorld)."""
    p = sub.add_parser("organism-build", help="build the CultureWorld model organism (resumable)")
    add_arguments(p)
    p.set_defaults(func=_run)

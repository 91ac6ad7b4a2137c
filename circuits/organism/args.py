"""The arguments of `organism-build`, shared by the sub-command (`circuits.organism.cli`) and
`python -m circuits.organism.build`; below both."""

from __future__ import annotations

import argparse

from circuits.organism.shipped import ORGANISM
from interp.cli import renamed_flag


def add_arguments(ap: argparse.ArgumentParser) -> None:
    # No default: a bare run must not overwrite the organism installed as package data.
    ap.add_argument("--out", required=True,
                    help=f"folder for pipeline/, judge/, logs/ (to rebuild the shipped organism, name it: {ORGANISM})")
    ap.add_argument("--train-steps", type=int, default=2600, help="training steps (the shipped build: 2600)")
    renamed_flag(ap, "--steps", "--train-steps")
    ap.add_argument("--run-dir", default="runs/organism", help="checkpoints (resumed if present)")
    ap.add_argument("--deadline", default=None, help="HH:MM UTC: size the step count to end by then")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-resume", action="store_true")

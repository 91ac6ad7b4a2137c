"""The `organism-build` sub-command (registered from circuits/commands.py)."""

from __future__ import annotations

import argparse

from circuits.organism.args import add_arguments


def _run(args: argparse.Namespace) -> int:
    # Imported when the command runs, not when the parser is built: training code stays unloaded
    # for every other command (no circle: build imports args, not this module).
    from circuits.organism.build import run

    return run(args)


def register_organism(sub: argparse._SubParsersAction) -> None:
    """Add `culturelens organism-build` (train, judge, export and evaluate CultureWorld)."""
    p = sub.add_parser("organism-build", help="build the CultureWorld model organism (resumable)")
    add_arguments(p)
    p.set_defaults(func=_run)

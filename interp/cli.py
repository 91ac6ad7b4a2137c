"""Command-line sub-commands of `interp`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this package's sub-commands to the `culturelens` parser."""

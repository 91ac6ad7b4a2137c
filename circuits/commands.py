"""Command-line sub-commands of `circuits` (the culture analyses)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the circuits sub-commands to the `culturelens` parser."""

"""The `culturelens` command: one parser assembled from each package's sub-commands."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="culturelens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    # Each package registers its own sub-commands; imports stay lazy inside each command.
    from interp import cli as interp_cli
    from sae import cli as sae_cli
    from circuits import commands as circuits_commands

    for register in (interp_cli.register, sae_cli.register, circuits_commands.register):
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from interp import distributed

    args = build_parser().parse_args(argv)
    # Under torchrun / accelerate launch: join the process group now, so a missing peer fails here.
    distributed.init()
    try:
        return int(args.func(args) or 0)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())

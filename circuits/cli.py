"""The `culturelens` command: one parser assembled from each package's sub-commands.

Errors are one line on stderr, `culturelens: error: <message>`: exit status 2 for a usage
error (bad or missing arguments), 1 for a failure. `--debug` (anywhere on the line) or
CULTURELENS_DEBUG=1 shows the traceback instead. Every command's `--out` folder is locked for
the command's duration (`interp.folder_lock`): a second writer fails at once with the pid.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from typing import NoReturn

from interp import cli as interp_cli
from interp import distributed
from interp.errors import CultureLensError
from interp.folder_lock import lock_folder
from sae import cli as sae_cli

from circuits import commands as circuits_commands
from circuits.data.cli import register_data

DEBUG_ENV = "CULTURELENS_DEBUG"


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2) that name the sub-command."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("culturelens").strip()
        sys.stderr.write(f"culturelens: error: {where + ': ' if where else ''}{message} "
                         f"(see {self.prog} --help)\n")
        sys.exit(2)


def _load_pipeline(path: str, device: str = "cpu", trust_remote_code: bool = False, **kw: object) -> object:
    """`circuits.io.load_pipeline` (imported here, not at the top: `culturelens --help` stays torch-free)."""
    from circuits.io import load_pipeline

    return load_pipeline(path, device=device, trust_remote_code=trust_remote_code, **kw)


def build_parser() -> Parser:
    parser = Parser(prog="culturelens", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error (or set {DEBUG_ENV}=1)")
    # Sub-parsers inherit the Parser class (argparse passes the parent's class on).
    sub = parser.add_subparsers(dest="command", required=True)
    # Each package registers its own sub-commands; heavy imports stay inside each command.
    # interp's and sae's commands open --model folders with circuits' loader, so the shipped
    # organism (recognised by its code's fingerprint) needs no --trust-remote-code there either.
    interp_cli.register(sub, load=_load_pipeline)
    register_data(sub)  # `evaluate`: the culture data's command (circuits.data)
    sae_cli.register(sub, load=_load_pipeline)
    circuits_commands.register(sub)
    return parser


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0", "false", "no")


def describe(e: BaseException) -> str:
    """The one-line message of an error: culturelens errors as they are (they name what and
    where), OS errors with their file, anything else with its type and a pointer to --debug."""
    if isinstance(e, CultureLensError):
        msg = str(e)
    elif isinstance(e, OSError):
        what = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        msg = f"{e.filename}: {what}" if e.filename else what
    else:
        msg = f"{type(e).__name__}: {e} (unexpected; rerun with --debug for the traceback)"
    return " ".join(line.strip() for line in msg.splitlines() if line.strip()) or type(e).__name__


def run(argv: list[str] | None = None) -> int:
    """Parse and run one command, letting its exceptions propagate (for tests and callers that
    want them); `main` is the same with errors reported as one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line, also after the sub-command
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    # Under torchrun / accelerate launch: join the process group now, so a missing peer fails here.
    distributed.init()
    ok = False
    try:
        out = getattr(args, "out", None)
        # One writer per --out: only rank 0 writes it under torchrun (others use scratch folders).
        lock = lock_folder(out) if isinstance(out, str) and distributed.is_main() else contextlib.nullcontext()
        with lock:
            code = int(args.func(args) or 0)
        ok = True
        return code
    finally:
        distributed.shutdown(wait=ok)


def main(argv: list[str] | None = None) -> int:
    """The `culturelens` entry point: exit status 0, 1 (failure) or 2 (usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if _debug_requested(argv):
        return run(argv)
    try:
        return run(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, already reported on one line)
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        sys.stderr.write("culturelens: error: interrupted\n")
        return 130
    except Exception as e:  # noqa: BLE001 — the one place every error becomes a message
        sys.stderr.write(f"culturelens: error: {describe(e)}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Command-line sub-commands of `interp`."""

from __future__ import annotations

import argparse
from typing import Any, Callable

# `load(path, device=..., trust_remote_code=..., **kw) -> Model`: how a command opens a --model folder.
# `interp.load` by default; the `culturelens` entry point passes one that also trusts folders whose
# code is the shipped organism's (circuits.io.load_pipeline: interp cannot know circuits' fingerprints).
Loader = Callable[..., Any]


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (the message names the value; argparse adds the option)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _demo(args: argparse.Namespace) -> int:
    import torch

    import interp
    from interp.demo import run_demo

    load = args.load or interp.load
    model = load(args.model, device=args.device, dtype=getattr(torch, args.dtype),
                 trust_remote_code=args.trust_remote_code) if args.model else None
    report = run_demo(args.out, model=model, family=args.family, seed=args.seed, steps=args.steps, k=args.k)
    print(f"wrote {report}")
    return 0


def register(sub: argparse._SubParsersAction, load: Loader | None = None) -> None:
    """Add this package's sub-commands to the `culturelens` parser (`load`: see `Loader`)."""
    p = sub.add_parser("demo", help="trace, patch, mask and generate on a tiny (or given) pipeline; write a report")
    p.add_argument("--out", required=True, help="output folder (report.md, images.png, plots)")
    p.add_argument("--model", default=None, help="a local diffusers pipeline folder (default: a tiny random one)")
    p.add_argument("--family", default="sd", choices=["sd", "sdxl", "altdiffusion", "sd3"],
                   help="family of the tiny pipeline when --model is not given")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a --model folder that ships its own pipeline.py (only for folders you trust)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=positive_int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--k", type=positive_int, default=8, help="number of units to mask")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.set_defaults(func=_demo, load=load)

"""Denoiser activation store: throughput against the plain generations it needs, and peak
memory flat in the number of prompts.

Model: a tiny pipeline (`interp.tiny`, default "sd": 2 steps, 16×16 pixels, CFG), site
`unet.down.0.attn.0.attn2.hook_out` (64 pixels × 16 channels), every step, conditional branch.
- throughput: `ActivationStore.build` over P prompts × S seeds (batches of B prompts) / the
  plain generations of the same batches (`interp.generate`, images decoded; target ≤ 1.3×),
  and, for information, / the same generations without the VAE decode (the store skips it);
  medians of interleaved repeats, wall and process-CPU clocks;
- peak RSS (ru_maxrss of a fresh process that loads the model and builds the store) at
  --small and --large prompts: flat means the difference is a few MB whatever the store size
  (the store itself is written shard by shard: `--shard-tokens` rows at a time).

    python benchmarks/bench_denoiser_store.py [--prompts 64] [--small 100] [--large 1000]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import interp
from sae import ActivationStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_interp import median_times, print_ratios  # noqa: E402  (the benchmarks' shared timing helpers)

SITE = "unet.down.0.attn.0.attn2.hook_out"
WORDS = ("red", "old", "big", "blue", "tall", "new", "small", "green")
NOUNS = ("cat", "dog", "box", "hat", "tea", "house", "soup", "dress")


def prompts(n: int) -> list[str]:
    """n short prompts (the tiny tokenizers take 16 tokens), distinct up to 64, then repeated."""
    base = [f"a {w} {x}" for w in WORDS for x in NOUNS]
    return [base[i % len(base)] for i in range(n)]


def build(model, folder: Path, ps: list[str], seeds: list[int], batch: int, shard_tokens: int,
          family_site: str) -> ActivationStore:
    shutil.rmtree(folder, ignore_errors=True)
    return ActivationStore.build(model, ps, family_site, folder, batch_size=batch, seeds=seeds,
                                 shard_tokens=shard_tokens, progress=False)


def child(args) -> None:
    """One fresh process: load, build a store of --child-prompts prompts, print peak RSS (MB)."""
    torch.set_num_threads(args.threads)
    model = interp.tiny(args.family, seed=0)
    folder = Path(tempfile.mkdtemp())
    try:
        st = build(model, folder / "store", prompts(args.child_prompts), [0], args.batch, args.shard_tokens, args.site)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
        print(json.dumps({"prompts": args.child_prompts, "rows": st.n_tokens, "shards": len(st.shards),
                          "peak_rss_mb": rss, "max_buffered_rows": st.manifest["max_buffered_tokens"]}))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="sd")
    ap.add_argument("--site", default=SITE)
    ap.add_argument("--prompts", type=int, default=64, help="prompts of the throughput measure")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shard-tokens", type=int, default=16_384)
    ap.add_argument("--small", type=int, default=100, help="prompts of the first RSS run")
    ap.add_argument("--large", type=int, default=1000, help="prompts of the second RSS run")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable on a shared CPU)")
    ap.add_argument("--child-prompts", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_prompts is not None:
        return child(args)
    torch.set_num_threads(args.threads)
    model = interp.tiny(args.family, seed=0)
    ps, seeds = prompts(args.prompts), list(range(args.seeds))
    tmp = Path(tempfile.mkdtemp())
    batches = [ps[i:i + args.batch] for i in range(0, len(ps), args.batch)]

    def plain(output_type: str = "pil"):
        def run():
            for b in batches:
                for s in seeds:
                    interp.generate(model, b, seed=[s] * len(b), output_type=output_type)
        return run

    def store():
        build(model, tmp / "store", ps, seeds, args.batch, args.shard_tokens, args.site)

    try:
        ref, ref_latent, ours = median_times([plain(), plain("latent"), store], args.repeats)
        print(f"{args.family} {args.site}: {len(ps)} prompts × {len(seeds)} seeds, batches of {args.batch}, "
              f"{model.defaults['steps']} steps, {args.threads} thread(s)")
        print_ratios([("store / plain generations", ref, ours, 1.3),
                      ("store / plain without VAE decode", ref_latent, ours, None)])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    runs = []
    for n in (args.small, args.large):
        cmd = [sys.executable, __file__, "--child-prompts", str(n), "--family", args.family, "--site", args.site,
               "--batch", str(args.batch), "--shard-tokens", str(args.shard_tokens), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        runs.append(json.loads(out))
    for r in runs:
        print(f"peak RSS {r['peak_rss_mb']:8.1f} MB at {r['prompts']:5d} prompts ({r['rows']} rows, "
              f"{r['shards']} shards, ≤ {r['max_buffered_rows']} rows buffered)")
    print(f"peak RSS growth {args.small} -> {args.large} prompts: {runs[1]['peak_rss_mb'] - runs[0]['peak_rss_mb']:+.1f} MB "
          f"({runs[1]['peak_rss_mb'] / runs[0]['peak_rss_mb']:.3f}×; the store grew {runs[1]['rows'] / runs[0]['rows']:.0f}×)")


if __name__ == "__main__":
    main()

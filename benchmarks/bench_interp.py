"""Overhead of interp's capture and masked generation against plain calls on the same model.

Model: SD-style pipeline with a CLIP-L-shaped random text encoder (12 layers x 768, 12 heads,
MLP 3072, 77 positions) and a small UNet (channels 64/128, sample 16, cross-attention 768).
Prints the median of repeated runs and the ratios; targets: capture <= 1.3x a plain forward
with output_hidden_states, masked generation <= 1.1x plain generation.

    python benchmarks/bench_interp.py [--repeats 7] [--batch 8] [--num-steps 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import interp
from interp.methods.generation import pipeline_kwargs

PROMPTS = ["a Japanese-style box", "和風の箱", "a Thai-style hat", "หมวกแบบไทย", "a French vase",
           "un vase français", "a Korean-style vase", "한국식 꽃병"]


def median_times(fns, repeats: int) -> list[tuple[float, float]]:
    """(median wall time, median process CPU time) of each function. Runs are interleaved so load
    drift hits all alike; CPU time is the steadier figure on a shared machine (1 thread)."""
    for fn in fns:
        fn()  # warm-up
    times = [([], []) for _ in fns]
    for _ in range(repeats):
        for fn, (wall, cpu) in zip(fns, times):
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    return [(statistics.median(w), statistics.median(c)) for w, c in times]


def print_ratios(rows: list[tuple[str, tuple[float, float], tuple[float, float], float | None]]) -> None:
    """One line per (measure, clock): reference and our seconds, their ratio, and the target
    (None: reported only)."""
    width = max(len(name) for name, *_ in rows)
    print(f"{'measure':{width}s} {'clock':>5s} {'ref s':>8s} {'ours s':>8s} {'ratio':>6s} target")
    for name, ref, ours, target in rows:
        for i, clock in enumerate(("wall", "cpu")):
            ratio = ours[i] / ref[i]
            goal = "(info)" if target is None else f"<= {target} {'ok' if ratio <= target else 'MISSED'}"
            print(f"{name:{width}s} {clock:>5s} {ref[i]:8.3f} {ours[i]:8.3f} {ratio:6.3f} {goal}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--num-steps", type=int, default=4, help="denoising steps per generation")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable on a shared CPU)")
    args = ap.parse_args()
    if args.batch < 2:
        ap.error(f"--batch {args.batch}: at least 2 (the generation rows use the first 2 prompts)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = interp.tiny("sd", seed=0, text_layers=12, d_text=768, n_heads=12, max_len=77, mlp_ratio=4,
                        unet_channels=(64, 128), sample=16)
    enc = model.encoders["text"]
    prompts = (PROMPTS * ((args.batch + len(PROMPTS) - 1) // len(PROMPTS)))[: args.batch]
    sites = [f"text.blocks.{l}.hook_resid_post" for l in range(enc.n_layers)]

    def plain_forward():
        with torch.no_grad():
            ids = model.tokenize(prompts)["input_ids"]
            return enc.module(ids, output_hidden_states=True).hidden_states

    def traced():
        return interp.capture(model, prompts, sites)

    units = interp.Units("text.blocks.6.mlp.hook_post", list(range(0, 3072, 60)))
    kw = pipeline_kwargs(model, prompts[:2], 0, args.num_steps, 7.5)

    def plain_generate():
        with torch.no_grad():
            kw["generator"] = [torch.Generator().manual_seed(i) for i in range(2)]
            return model.pipe(**kw)

    def masked_generate():
        return interp.generate(model, prompts[:2], seed=0, num_steps=args.num_steps, guidance=7.5,
                               interventions=[interp.Mask(units)])

    rows = []
    t_fwd, t_cap = median_times([plain_forward, traced], args.repeats)
    rows.append(("text capture (12 resid sites, nnsight) / forward(output_hidden_states)", t_fwd, t_cap, 1.3))
    t_gen, t_mask = median_times([plain_generate, masked_generate], args.repeats)
    rows.append((f"masked generation ({len(units)} units, {args.num_steps} steps) / plain pipeline", t_gen, t_mask, 1.1))
    print(f"model: {model!r}; batch {args.batch}; torch threads {torch.get_num_threads()}; "
          f"median of {args.repeats}")
    print_ratios(rows)


if __name__ == "__main__":
    main()

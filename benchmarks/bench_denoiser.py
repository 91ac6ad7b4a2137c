"""Cost of denoiser patching and attribution maps against plain generation, on the organism.

Model: the shipped CultureWorld organism (`circuits.organism.shipped.PIPELINE`; 20 DDIM steps, 32×32
pixels, no CFG). Measures, as medians of interleaved repeats (wall and process-CPU clocks):
- a head × step patching grid (`interp.patch` at one cross-attention `hook_z`, every head × every
  step: 2 × 20 = 40 conditions), all in, i.e. the clean capture and the corrupt run included,
  divided by the number of conditions: cost per patched condition / one plain generation.
  Once with one condition per generation (batch_size=1) and once packed (all in one batch);
  target ≤ 1.2× unpacked, lower packed;
- `interp.attribution` (DAAM maps of two words over all 13 cross-attention modules, 20 steps) /
  one plain generation of the same prompt; target ≤ 1.3×;
- `interp.effect_map` (one intervention) / one plain generation, for information (it runs a
  two-row generation and the edited image, so about 2×+ by construction).

    python benchmarks/bench_denoiser.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

import interp
from circuits.organism.shipped import PIPELINE
from interp.methods.generation import pipeline_kwargs
from circuits.io import load_pipeline  # the shipped organism is trusted by fingerprint, not by opt-in

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_interp import median_times, print_ratios  # noqa: E402  (the benchmarks' shared timing helpers)

ORGANISM = Path(os.environ.get("CULTURELENS_PIPELINE", PIPELINE))
CLEAN, CORRUPT = ["a Japanese-style box"], ["a Thai-style box"]
SITE = "unet.down.1.attn.0.attn1.hook_z"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable on a shared CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not (ORGANISM / "model_index.json").exists():
        sys.exit(f"no organism at {ORGANISM}: run `culturelens organism-build` first")
    model = load_pipeline(ORGANISM)
    steps = model.defaults["steps"]
    n_heads = interp.model.sites.parse(model, SITE).dim
    n_cond = n_heads * steps
    kw = pipeline_kwargs(model, CORRUPT, 0, None, None)
    clean_pixels = interp.generate(model, CLEAN, seed=0).latents

    def plain():
        with torch.no_grad():
            kw["generator"] = [torch.Generator().manual_seed(0)]
            return model.pipe(**kw)

    def metric(gen):
        return -(gen.latents - clean_pixels).pow(2).mean()

    def grid(batch_size):
        def run():
            res = interp.patch(model, CLEAN, CORRUPT, [SITE], metric, steps="each", heads="each",
                               batch_size=batch_size)
            assert len(res.rows) == n_cond
        return run

    def maps():
        return interp.attribution(model, CLEAN[0], ["Japanese", "box"], seed=0)

    amp = interp.Amplify(interp.Units(SITE.replace("hook_z", "hook_out"), list(range(8))), 4.0)

    def effect():
        return interp.effect_map(model, CLEAN[0], interventions=[amp], seed=0)

    t_plain, t_one, t_packed, t_maps, t_eff = median_times(
        [plain, grid(1), grid(n_cond), maps, effect], args.repeats)
    rows = [
        (f"patch grid {n_heads} heads x {steps} steps, 1 condition/generation: per condition / plain",
         t_plain, tuple(t / n_cond for t in t_one), 1.2),
        (f"patch grid {n_heads} heads x {steps} steps, {n_cond} conditions/generation: per condition / plain",
         t_plain, tuple(t / n_cond for t in t_packed), 1.2),
        ("attribution (2 words, 13 cross-attention modules) / plain", t_plain, t_maps, 1.3),
        ("effect_map (1 intervention; 2-row run + edited image) / plain", t_plain, t_eff, None),
    ]
    print(f"model: organism {model!r}; {steps} steps; torch threads {torch.get_num_threads()}; "
          f"median of {args.repeats}")
    print_ratios(rows)


if __name__ == "__main__":
    main()

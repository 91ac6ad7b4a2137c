"""Benchmark: CultureVQA scoring under per-culture interventions on the shipped CultureWorld
organism — cultures sharing batches (`interp.OnRows`) vs one culture per batch.

Every masking condition, random draw, λ value and enhancer of the main job is one `score` call,
so this ratio is most of the main job's generation time. The reference, in the same run, is the
same call with `batch_size` = prompts per culture (each batch one culture, as before OnRows).
Both must give identical per-prompt judgements; the script checks it.

    python benchmarks/bench_scoring.py [--batch-size 64] [--threads N] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import interp
    from circuits.analysis.cultureworld import ASSETS, TEST_NOUNS, organism_pairs
    from circuits.evaluate import ScoreSettings, score
    from circuits.io import load_pipeline  # the shipped organism is trusted by fingerprint, not by opt-in
    from circuits.organism.judge import CultureWorldJudge
    from circuits.pairs import by_concept

    model = load_pipeline(ASSETS / "pipeline")
    judge = CultureWorldJudge.load(ASSETS / "judge")
    groups = by_concept(organism_pairs(TEST_NOUNS))
    per_culture = max(len(v) for v in groups.values())
    site = "text.blocks.0.mlp.hook_post"
    # A different unit set per culture, so every condition needs its own interventions.
    units = {c: interp.Units(site, [4 * i + j for j in range(4)]) for i, c in enumerate(groups)}
    def mask(c):
        return [interp.Mask(units[c])]
    score(model, {c: v[:1] for c, v in list(groups.items())[:2]}, judge, mask)  # warm-up

    times, results = {}, {}
    for name, bs in (("one culture per batch (reference)", per_culture), ("shared batches", args.batch_size)):
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            results[name] = score(model, groups, judge, mask, settings=ScoreSettings(batch_size=bs), desc=name)
            best = min(best, time.perf_counter() - t0)
        times[name] = best
    a, b = results.values()
    assert a.predicted == b.predicted, "shared batches changed a judgement"
    n = len(a.ids)
    print(f"{n} prompts ({len(groups)} cultures x {per_culture}), {model.defaults['steps']} DDIM steps, "
          f"threads {torch.get_num_threads()}; identical judgements: yes")
    ref = times["one culture per batch (reference)"]
    for name, t in times.items():
        print(f"{name:>36}: {t:6.2f} s ({1000 * t / n:.0f} ms/prompt), speed-up {ref / t:.2f}x")


if __name__ == "__main__":
    main()

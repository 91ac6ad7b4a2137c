"""Feature browser build time for 4,096 latents (synthetic activations), against a reference
measured in the same run: writing the same number of plain JSON files (one per latent, each
holding that latent's density, maximum and top-example ids, from statistics computed outside
the timer). Wall and CPU seconds (CPU time is steadier on a shared machine). Runs alternate (reference, build, reference, build, ...) so load from other
processes hits both alike; medians are reported, with absolute seconds.

Run: python benchmarks/bench_browser.py [--latents 4096] [--examples 512] [--repeats 3] [--images]
     --images: a denoiser-style browser (8×8 grid, 64-pixel images, PNG overlays) instead of text."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sae.browser import build_browser, latent_stats, synthetic_activations


def reference(stats, folder: Path) -> tuple[float, float]:
    """(wall, CPU) seconds to write one small JSON file per latent (the floor any per-latent
    site pays)."""
    folder.mkdir(parents=True)
    t0, c0 = time.perf_counter(), time.process_time()
    for s in stats:
        (folder / f"{s.index}.json").write_text(json.dumps(
            {"index": s.index, "frac_nonzero": s.frac_nonzero, "maxActApprox": s.max_value,
             "top": [ex for ex, _ in s.top]}))
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latents", type=int, default=4096)
    ap.add_argument("--examples", type=int, default=512)
    ap.add_argument("--positions", type=int, default=16)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", action="store_true", help="denoiser-style browser with PNG overlays")
    a = ap.parse_args()
    grid = (8, 8) if a.images else None
    acts = synthetic_activations(a.examples, 64 if a.images else a.positions, a.k, a.latents, seed=0,
                                 grid=grid, image_size=64)
    stats = latent_stats(acts, a.top_k)
    refs, builds = [], []
    with tempfile.TemporaryDirectory() as d:
        for r in range(a.repeats):
            refs.append(reference(stats, Path(d) / f"ref{r}"))
            t0, c0 = time.perf_counter(), time.process_time()
            site = build_browser(acts, Path(d) / f"site{r}", top_k=a.top_k, per_page=256, progress=False)
            builds.append((time.perf_counter() - t0, time.process_time() - c0))
        n_files = sum(1 for p in site.root.rglob("*") if p.is_file())
    ref, build = (statistics.median(w for w, _ in refs), statistics.median(c for _, c in refs)), \
        (statistics.median(w for w, _ in builds), statistics.median(c for _, c in builds))
    kind = "denoiser (PNG overlays)" if a.images else "text"
    print(f"{kind} browser: {a.latents:,} latents, {a.examples} examples × {acts.values.shape[1]} positions, "
          f"k {a.k}, top {a.top_k}; {n_files:,} files; medians of {a.repeats} alternating runs")
    print("| what | wall s | CPU s | ratio to reference (wall) | (CPU) |\n|---|---|---|---|---|")
    print(f"| reference: {a.latents:,} plain JSON files | {ref[0]:.2f} | {ref[1]:.2f} | 1.00 | 1.00 |")
    print(f"| build_browser (stats, {len(site.index_pages)} index pages, {len(site.latent_pages):,} latent "
          f"pages, JSON) | {build[0]:.2f} | {build[1]:.2f} | {build[0] / ref[0]:.1f} | {build[1] / ref[1]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cross-kernel check: the main job under the default CPU kernels and under other kernel selections.

Not a speed benchmark: a slow check that lives beside them (`make check-kernels`). It runs
1. `culturelens analyze` (quick mode unless --full) with this machine's default kernels,
2. `culturelens spread` over --seeds SAE seeds next to it,
3. the same analysis in a subprocess under each selection in SELECTIONS (ATen's vectorised
   kernels off, MKL and oneDNN limited to older ISAs: the float rounding of another CPU),
and checks, per selection, that the SAE-independent rows equal the default run's exactly and
that the SAE-dependent rows fall within the spread over SAE seeds. The table goes to stdout and
`OUT/kernels.md`; the exit code is 1 when an SAE-independent row differs (a promise broken) and
0 otherwise, with the rows outside the spread listed (a finding to report: the spread of a few
seeds is not a guarantee).

    python benchmarks/check_kernels.py [--out runs/kernels] [--seeds 0 1 2] [--full]
        [--main report] [--spread report/spread] [--selections aten-default+blas-sse4]

`--main`/`--spread` reuse a finished main job and its spread (`make demo`, `make spread`) as the
default-kernel reference instead of recomputing them (full mode: about 45 min saved).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from circuits.analysis.spread import INDEPENDENT, Spread, check_within, sae_spread
from circuits.cli import main as culturelens

ROOT = Path(__file__).resolve().parents[1]
SELECTIONS = {
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten-default+blas-sse4": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                               "ONEDNN_MAX_CPU_ISA": "SSE41"},
}


def run_under(env_extra: dict[str, str], out: Path, full: bool) -> dict:
    """The analysis in a fresh process with `env_extra` (kernels are chosen at process start)."""
    env = {**os.environ, **env_extra, "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, "-m", "circuits.cli", "analyze", "--out", str(out)] + ([] if full else ["--quick"])
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"check_kernels: {' '.join(f'{k}={v}' for k, v in env_extra.items())} {' '.join(cmd)} "
                         f"failed:\n{p.stderr[-3000:]}")
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/kernels")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--full", action="store_true", help="the full main job (slow: about 15 min a run)")
    ap.add_argument("--main", default=None, help="a finished main job of the same mode (default kernels) to reuse")
    ap.add_argument("--spread", default=None, help="a finished spread folder of the same mode to reuse")
    ap.add_argument("--selections", nargs="+", default=list(SELECTIONS), choices=list(SELECTIONS),
                    help="kernel selections to run (default: all)")
    args = ap.parse_args()
    out = Path(args.out)
    mode = [] if args.full else ["--quick"]
    ref_dir = Path(args.main) if args.main else out / "default"
    if not (ref_dir / "results.json").is_file():
        if args.main:
            raise SystemExit(f"check_kernels: --main {args.main}: no results.json there")
        assert culturelens(["analyze", "--out", str(ref_dir), *mode]) == 0
    ref = json.loads((ref_dir / "results.json").read_text(encoding="utf-8"))
    spread_dir = Path(args.spread) if args.spread else out / "spread"
    spread = Spread.load(spread_dir) if (spread_dir / "spread.json").is_file() else \
        sae_spread(spread_dir, seeds=args.seeds, main=ref_dir, quick=not args.full)
    lines = ["| selection | row | value | spread / reference | within |", "|---|---|---|---|---|"]
    broken, outside = [], []
    indep = {k for k, *_ in INDEPENDENT}
    for name in args.selections:
        env = SELECTIONS[name]
        res = run_under(env, out / name, args.full)
        for c in check_within(res, spread, reference=ref):
            rng = f"= {c.low}" if c.key in indep else f"[{c.low}, {c.high}]"
            lines.append(f"| {name} | {c.key} | {c.value} | {rng} | {'yes' if c.ok else '**no**'} |")
            if not c.ok:
                (broken if c.key in indep else outside).append(f"{name}: {c.key}")
    text = "\n".join(lines + ["", f"SAE-independent rows differing: {broken or 'none'}; "
                              f"SAE-dependent rows outside the spread of SAE seeds {spread.seeds}: {outside or 'none'}."])
    (out / "kernels.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())

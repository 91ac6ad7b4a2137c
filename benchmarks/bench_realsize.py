"""Real-size pipelines on this machine: per architecture, wall time and peak RSS for building the
random-weight folder, loading it, capturing every text site vs a plain encoder forward, plain vs
masked vs amplified generation, patching and a culture-layer scan, with the overhead ratios
against the plain runs measured in the same process (goals: capture 1.3x, masked generation 1.1x).
Architectures too big for this machine's memory are reported from the meta device (parameters,
site counts) instead.

    python benchmarks/bench_realsize.py [--names sd15 altdiffusion-m9 sd21] [--num-steps 2 --size 256]
                                        [--out benchmarks/results/realsize.md] [--tiny]
"""

from __future__ import annotations

import argparse
import gc
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

import interp
import interp.zoo as zoo
from circuits.realsize import RealSizeRun, run

META_ONLY = ("sdxl", "sd3-medium", "flux-schnell")  # > this machine's 23 GB in fp32 with generation


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def one(name: str, num_steps: int, size: int, dtype: torch.dtype, guidance: float | None, tiny: bool) -> RealSizeRun:
    tmp = Path(tempfile.mkdtemp(prefix=f"realsize-{name}-"))
    rec = RealSizeRun(name, "cpu", str(dtype).replace("torch.", ""), {})
    try:
        if tiny:
            model = interp.tiny(zoo.entry(name).family, seed=0, max_len=77)
            rec.measure("build (tiny stand-in)", lambda: model.save_pretrained(tmp / "p"))
        else:
            rec.measure("build folder (random weights)", lambda: zoo.build(name, tmp / "p", dtype=dtype))
        gc.collect()
        model = rec.measure("load", lambda: interp.load(tmp / "p", dtype=dtype))
        run(model, name, num_steps=num_steps, size=size, guidance=guidance, record=rec)
        del model
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        gc.collect()
    return rec


def meta_table(names: list[str]) -> str:
    lines = ["| pipeline | component | parameters | published | sites |", "|---|---|---:|---|---:|"]
    for n in names:
        m = zoo.model(n, "meta")
        rows = zoo.params(n, m.pipe)
        for i, (k, r) in enumerate(rows.items()):
            lines.append(f"| {n if i == 0 else ''} | {k} | {r['params'] / 1e6:,.1f} M | {r['source']} | "
                         f"{len(m.sites()) if i == 0 else ''} |")
        del m
        gc.collect()
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--names", nargs="+", default=["sd15", "altdiffusion-m9", "sd21"])
    ap.add_argument("--num-steps", type=int, default=2, help="denoising steps per generation")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--guidance", type=float, default=None, help="default: the pipeline's (7.5: CFG doubles the batch)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--meta", nargs="*", default=list(META_ONLY), help="architectures reported from the meta device")
    ap.add_argument("--tiny", action="store_true", help="tiny stand-ins of the same families (a smoke test)")
    ap.add_argument("--out", default=None, help="also write the tables to this markdown file")
    a = ap.parse_args(argv)
    dtype = getattr(torch, a.dtype)
    t0 = time.time()
    parts = [f"# Real-size pipelines ({machine()})", ""]
    for n in a.names:
        rec = one(n, a.num_steps, a.size, dtype, a.guidance, a.tiny)
        print(rec.to_markdown(), flush=True)
        print(f"checks: {rec.checks}\n", flush=True)
        parts += [rec.to_markdown(), "", f"checks: `{rec.checks}`", ""]
    if a.meta:
        table = meta_table(a.meta)
        print(table)
        parts += ["## From the meta device (no weights)", "", table, ""]
    parts.append(f"total {time.time() - t0:.0f} s")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text("\n".join(parts) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One command for one CUDA GPU: real-size random-weight SDXL, AltDiffusion-m9 and SD3-medium
folders (fp16 / bf16), then load, capture of every text site, plain / masked / amplified
generation at the native resolution with 20 steps, activation patching on three text sites, a
16-pair culture-layer scan and Top-K SAE training on 1 M culture-layer tokens. Prints each
phase's wall time, peak GPU memory and peak RSS, and the overhead ratios; exits non-zero if any
phase fails or any check does not hold. Prepared to finish within 10 minutes on one H100/H200.

    python benchmarks/gpu_smoke.py                       # the real thing (needs CUDA)
    python benchmarks/gpu_smoke.py --tiny --device cpu   # the same code path on tiny stand-ins
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

import interp
import interp.zoo as zoo
from circuits.realsize import RealSizeRun, run

# Half precision each architecture is published / run in.
DTYPES = {"sdxl": torch.float16, "altdiffusion-m9": torch.float16, "sd3-medium": torch.bfloat16}
CHECKS = ("captured_finite", "mask_changes_latents", "amplify_changes_latents", "latents_finite")


def one(name: str, a: argparse.Namespace, work: Path) -> RealSizeRun:
    dtype = torch.float32 if a.tiny else DTYPES.get(name, torch.float16)
    rec = RealSizeRun(name, a.device, str(dtype).replace("torch.", ""), {})
    folder = work / name
    if a.tiny:
        tiny = interp.tiny(zoo.entry(name).family, seed=0, max_len=77)
        rec.measure("build (tiny stand-in)", lambda: tiny.save_pretrained(folder))
    else:
        rec.measure("build folder (random weights, CPU)", lambda: zoo.build(name, folder, dtype=dtype))
    gc.collect()
    model = rec.measure("load", lambda: interp.load(folder, device=a.device, dtype=dtype))
    d = model.defaults
    num_steps = a.num_steps if a.num_steps is not None else (2 if a.tiny else 20)
    size = a.size or (64 if a.tiny else int(d["height"]))
    run(model, name, num_steps=num_steps, size=size, sae_tokens=a.sae_tokens if not a.tiny else 5_000,
        sae_dir=work / f"{name}-sae", record=rec)
    del model
    gc.collect()
    if a.device.startswith("cuda"):
        torch.cuda.empty_cache()
    shutil.rmtree(folder, ignore_errors=True)
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--names", nargs="+", default=list(DTYPES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--num-steps", type=int, default=None, help="denoising steps (default 20; tiny: 2)")
    ap.add_argument("--size", type=int, default=None, help="default: the pipeline's native resolution")
    ap.add_argument("--sae-tokens", type=int, default=1_000_000)
    ap.add_argument("--tiny", action="store_true", help="tiny stand-ins of the same families")
    ap.add_argument("--workdir", default=None, help="where folders are written (default: a temp dir)")
    a = ap.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_smoke: CUDA is not available (use --device cpu --tiny for the CPU smoke test)", file=sys.stderr)
        return 2
    work = Path(a.workdir or tempfile.mkdtemp(prefix="gpu-smoke-"))
    if a.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    t0 = time.time()
    failures: list[str] = []
    for name in a.names:
        try:
            rec = one(name, a, work)
        except Exception:  # report and go on: every architecture gets its chance
            failures.append(f"{name}: {traceback.format_exc()}")
            print(f"FAILED {name}\n{failures[-1]}", flush=True)
            continue
        print(rec.to_markdown(), flush=True)
        print(f"checks: {rec.checks}  ({time.time() - t0:.0f} s so far)\n", flush=True)
        bad = [c for c in CHECKS if not rec.checks.get(c)]
        if bad:
            failures.append(f"{name}: checks failed: {bad}")
        rec.save(work / f"{name}-run")  # realsize.json + realsize.safetensors (work/<name> held the pipeline)
    print(f"total {time.time() - t0:.0f} s; {len(failures)} failure(s)")
    for f in failures:
        print("FAILURE:", f.splitlines()[0])
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

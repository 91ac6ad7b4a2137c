"""How far one request travels through culturelens before it does its work: the project files and
calls a masked `interp.generate` passes through before `Mask.apply` zeroes a value, and the files a
whole `circuits.validate_units` call touches (issue 21's "one request's path").

Not a speed benchmark (no timing): a profiler hook (`sys.setprofile`) records every Python call
whose code lives in this repository's packages (interp, circuits, sae), in order. Printed per
request: function calls until the first zeroing, distinct project files, module crossings (consecutive
project calls in different files) and the files in first-visit order. On the tiny SD pipeline
(`interp.tiny("sd")`) with a colour judge, so it runs in a few seconds on a CPU.

    python benchmarks/request_path.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = tuple(str(ROOT / p) + "/" for p in ("interp", "circuits", "sae"))


class _Stop(Exception):
    """Raised from the profiler once the target function is entered."""


def trace(run: Callable[[], Any], stop_at: str | None = None) -> dict[str, Any]:
    """Run `run()` recording project calls; with `stop_at` ("file.py:function"), stop at its first call."""
    calls: list[tuple[str, str]] = []

    def hook(frame, event, arg):  # noqa: ANN001 (sys.setprofile's signature)
        if event != "call":
            return
        file = frame.f_code.co_filename
        if not file.startswith(PACKAGES):
            return
        rel = str(Path(file).relative_to(ROOT))
        calls.append((rel, frame.f_code.co_name))
        if stop_at is not None and f"{rel}:{frame.f_code.co_name}" == stop_at:
            raise _Stop

    sys.setprofile(hook)
    try:
        run()
        reached = stop_at is None
    except _Stop:
        reached = True
    finally:
        sys.setprofile(None)
    files: list[str] = []
    for f, _ in calls:
        if f not in files:
            files.append(f)
    crossings = sum(1 for a, b in zip(calls, calls[1:]) if a[0] != b[0])
    named = [c for c in calls if not c[1].startswith("<")]  # without comprehension and lambda frames
    return {"reached": reached, "calls": len(named), "frames": len(calls), "files": len(files), "crossings": crossings,
            "modules": sorted({f.split("/")[0] + "/" + f.split("/")[1] if "/" in f else f for f in files}),
            "file_order": files}


def _judge(images: list) -> Any:
    """A deterministic stand-in for CultureVQA (a fixed projection of the mean colour), as the tests use."""
    import numpy as np
    import torch

    from circuits.data.culturebench import LABELS

    proj = torch.randn(3, len(LABELS), generator=torch.Generator().manual_seed(0))
    x = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32).mean((0, 1)) / 255.0) for im in images])
    return torch.softmax((x - 0.5) @ proj * 50, -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    args = ap.parse_args()

    import circuits
    import interp

    model = interp.tiny("sd", seed=0, max_len=77)
    units = interp.Units("text.blocks.1.hook_resid_post", [0, 3, 5])
    masked = [interp.Mask(units)]
    interp.generate(model, ["箱"], seed=0, num_steps=2, interventions=masked)  # warm: lazy imports, caches
    out = {"masked generate, until Mask.apply": trace(
        lambda: interp.generate(model, ["箱"], seed=0, num_steps=2, interventions=masked),
        stop_at="interp/interventions.py:apply")}

    pairs = [("a Japanese-style box", "a box", "Japanese-style", "box", "ja"),
             ("a German-style box", "a box", "German-style", "box", "de")]
    cu = {"ja": units, "de": interp.Units("text.blocks.1.hook_resid_post", [1, 2, 4])}

    def run() -> None:
        circuits.validate_units(model, cu, pairs, _judge, n_random=1, progress=False,
                                settings=circuits.ScoreSettings(num_steps=2, n_boot=10))

    run()
    out["validate_units (whole call)"] = trace(run)

    for name, r in out.items():
        print(f"## {name}\n")
        print(f"- function calls into interp/circuits/sae: {r['calls']} ({r['frames']} frames with "
              f"comprehensions and lambdas); distinct files: {r['files']}; "
              f"crossings between files: {r['crossings']}; reached: {r['reached']}")
        print(f"- packages: {', '.join(r['modules'])}")
        print("- files in first-visit order: " + " → ".join(r["file_order"]) + "\n")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()

"""The `evaluate` sub-command: judge a folder of generated images against their intended
cultures -> table (stdout + table.md), confusion-matrix figure and results.json.

Folder layouts:
- a CultureBench folder (`samples.jsonl`/`.csv` with `image` and `culture`), or
- one sub-folder per culture code: `<root>/<culture>/<name>.png`. Images whose names end in
  `_s<k>` / `_seed<k>` are seeds of one prompt and are bootstrapped together.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
_SEED = re.compile(r"_(?:s|seed)\d+$")


def collect(root: str | Path) -> tuple[list[str], list[str], list[str]]:
    """(image paths, intended cultures, prompt groups) from either folder layout."""
    from circuits.data.culturebench import CULTURES, DataError, load

    root = Path(root)
    if any((root / n).is_file() for n in ("samples.jsonl", "samples.csv")):
        ds = load(root, strict=False)
        rows = [r for r in ds if r.image]
        if not rows:
            raise DataError(f"{root}: no record has an image ({ds.summary()})")
        return [r.image for r in rows], [r.culture for r in rows], [r.id for r in rows]
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    paths, cultures, groups = [], [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if sub.name not in CULTURES:
            raise DataError(f"{sub}: folder name is not a culture code ({' '.join(CULTURES)})")
        for f in sorted(sub.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(f))
                cultures.append(sub.name)
                groups.append(f"{sub.name}/{_SEED.sub('', f.stem)}")
    if not paths:
        raise DataError(f"{root}: no images found (expected samples.jsonl or <culture>/<image> sub-folders)")
    return paths, cultures, groups


def make_judge(kind: str, model: str | None = None, fn: str | None = None, seed: int = 0,
               threshold: float | None = None) -> Any:
    """A judge by name: "clip" / "vlm" need `model` (a local folder); "callable" needs
    `fn` = "package.module:attribute" (a function images -> [N, 16] probabilities)."""
    from circuits.data import judges

    if kind in ("clip", "vlm") and not model:
        raise judges.JudgeError(f"--judge {kind} needs --model PATH (a local model folder)")
    if kind == "clip":
        return judges.clip(model, **({} if threshold is None else {"threshold": threshold}))
    if kind == "vlm":
        return judges.vlm(model, seed=seed)
    if kind == "callable":
        if not fn or ":" not in fn:
            raise judges.JudgeError("--judge callable needs --callable package.module:function")
        mod, _, attr = fn.partition(":")
        return judges.from_callable(getattr(importlib.import_module(mod), attr), name=fn)
    raise judges.JudgeError(f"unknown judge {kind!r}; use clip, vlm or callable")


def evaluate(root: str | Path, judge: Any, out: str | Path, n_boot: int = 2000, seed: int = 0,
             batch_size: int = 32) -> dict[str, Any]:
    """Judge every image, write results.json, table.md and confusion.png under `out`."""
    import torch

    from circuits import stats
    from circuits.data.culturebench import LABELS
    from interp.progress import bar
    from interp.result_io import atomic_write_text

    paths, target, groups = collect(root)
    probs = []
    for i in bar(range(0, len(paths), batch_size), desc="judging"):
        batch = paths[i:i + batch_size]
        kwargs = {"start_index": i} if hasattr(judge, "letter_logits") else {}
        probs.append(judge(batch, **kwargs))
    p = torch.cat(probs)
    pred = [LABELS[j] for j in p.argmax(1).tolist()]
    acc = stats.accuracy(pred, target, groups=groups, n_boot=n_boot, seed=seed)
    per = stats.per_culture_accuracy(pred, target, groups=groups, n_boot=n_boot, seed=seed)
    cm = stats.confusion_matrix(pred, target)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stats.plot_confusion(cm, path=out / "confusion.png")
    rows = [("all", len(target), acc)] + [(c, sum(t == c for t in target), ci) for c, ci in per.items()]
    table = ["| culture | n | accuracy | 95% CI |", "|---|---|---|---|"]
    table += [f"| {c} | {n} | {ci.estimate:.3f} | [{ci.low:.3f}, {ci.high:.3f}] |" for c, n, ci in rows]
    (out / "table.md").write_text("\n".join(table) + "\n", encoding="utf-8")
    result = {
        "root": str(root), "judge": getattr(judge, "name", type(judge).__name__), "n": len(target),
        "accuracy": vars(acc), "per_culture": {c: vars(ci) for c, ci in per.items()},
        "labels": LABELS, "confusion": cm.tolist(),
        "images": [{"path": pth, "intended": t, "judged": pr, "group": g, "probs": [round(x, 6) for x in row]}
                   for pth, t, pr, g, row in zip(paths, target, pred, groups, p.tolist())],
    }
    atomic_write_text(out / "results.json", json.dumps(result, ensure_ascii=False, indent=1))
    print("\n".join(table))
    return result


def _run(args: argparse.Namespace) -> int:
    judge = make_judge(args.judge, args.model, args.callable, args.seed, args.threshold)
    evaluate(args.images, judge, args.out, n_boot=args.n_boot, seed=args.seed)
    return 0


def register_data(sub: argparse._SubParsersAction) -> None:
    """Add `evaluate` to the `culturelens` parser."""
    p = sub.add_parser("evaluate", help="judge generated images against their intended cultures (CultureVQA)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", help="CultureBench folder or <culture>/<image> folder")
    p.add_argument("--judge", choices=["clip", "vlm", "callable"], required=True)
    p.add_argument("--model", help="local model folder for --judge clip / vlm")
    p.add_argument("--callable", help="package.module:function for --judge callable")
    p.add_argument("--threshold", type=float, help="CLIP: best-cosine threshold for 'unrecognisable'")
    p.add_argument("--out", required=True, help="output folder (results.json, table.md, confusion.png)")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run)

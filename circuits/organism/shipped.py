"""Where the shipped CultureWorld organism lives: package data of `circuits.organism`, so that a
wheel install (not only a source checkout) finds it. Every reader — the analysis, the CLI
defaults, tests, notebooks, benchmarks — uses these constants."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

ORGANISM = Path(__file__).resolve().parent / "assets" / "cultureworld"
PIPELINE = ORGANISM / "pipeline"  # diffusers folder (model_index.json, pipeline.py, weights)
JUDGE = ORGANISM / "judge"  # the CNN CultureVQA judge

# The code a pipeline folder may bring and still be trusted without `trust_remote_code`: the
# organism's folder carries a copy of this package's own pipeline.py (diffusers imports the
# folder's copy), so its fingerprint is the sha256 of the installed source, which can never drift
# from what is recorded. Trust comes from the bytes, never from where the folder lives.
PIPELINE_SOURCE = Path(__file__).resolve().parent / "pipeline.py"
PIPELINE_CLASS = ["pipeline", "CultureWorldPipeline"]
_STOCK_LIBRARIES = ("diffusers", "transformers")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def trusted_code() -> dict[str, str]:
    """{relative path: sha256} of the only code files a trusted organism folder holds."""
    return {"pipeline.py": _sha256(PIPELINE_SOURCE)}


def is_shipped_code(folder: str | Path) -> bool:
    """True when `folder`'s code is exactly the organism's: model_index.json names
    CultureWorldPipeline from pipeline.py and stock diffusers/transformers components, and the
    folder's only .py file is byte-identical to the package's pipeline.py. Weights and configs
    may differ (safetensors and JSON run no code)."""
    folder = Path(folder)
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(index, dict) or index.get("_class_name") != PIPELINE_CLASS:
        return False
    for name, value in index.items():
        if name.startswith("_"):
            continue
        if not (isinstance(value, list) and len(value) == 2 and (value[0] in _STOCK_LIBRARIES or value[0] is None)):
            return False
    code = {str(p.relative_to(folder)): _sha256(p) for p in folder.rglob("*.py") if p.is_file()}
    return code == trusted_code()

"""Reading a pipeline folder's own files: `model_index.json` (which components, which classes) and
`culturelens.json` (generation defaults), each checked with errors that name the file and line.

Below `loading` (which opens a folder) and `interp.zoo` (which opens a meta folder)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from interp.errors import CultureLensError, NotAPipelineError
from interp.result_io import read_json

DEFAULTS_FILE = "culturelens.json"

# Generation defaults a culturelens.json may set: (kind, minimum). Counts and sizes are ints ≥ 1
# (`steps: -3` or `0` would fail deep in the scheduler), guidance a finite number. "steps" is the
# default denoising count (generate's `num_steps`): the key keeps its pre-0.2.0 name in
# culturelens.json and `model.defaults`, so folders written before the rename read unchanged.
_DEFAULT_KEYS: dict[str, tuple[str, int | None]] = {"steps": ("int", 1), "guidance": ("number", None),
                                                    "height": ("int", 1), "width": ("int", 1)}



def read_index(path: Path) -> dict[str, Any]:
    index = path / "model_index.json"
    if not path.is_dir():
        raise NotAPipelineError(f"{path}: not a directory (expected a diffusers pipeline folder)")
    if not index.is_file():
        found = sorted(p.name for p in path.iterdir())[:10]
        raise NotAPipelineError(
            f"{path}: no model_index.json, so this is not a diffusers pipeline folder (found: {found})"
        )
    data = read_json(index, NotAPipelineError)
    if not isinstance(data, dict):
        raise NotAPipelineError(f"{index}: expected a JSON object (component name -> [library, class]), "
                                f"got a JSON {type(data).__name__}")
    cls = data.get("_class_name")
    if not (isinstance(cls, str) or isinstance(cls, list) and len(cls) == 2 and all(isinstance(c, str) for c in cls)):
        raise NotAPipelineError(f"{index}: '_class_name' should be a pipeline class name (a string), got {cls!r}")
    for name, spec in data.items():
        # A component is [library, class] (either may be null for an absent optional component).
        if not name.startswith("_") and isinstance(spec, list) and (
                len(spec) != 2 or not all(x is None or isinstance(x, str) for x in spec)):
            raise NotAPipelineError(f"{index}: component {name!r} should be [library, class], got {spec!r}")
    return data


def read_defaults(path: Path) -> dict[str, Any]:
    """Generation defaults shipped in the folder's culturelens.json (optional)."""
    f = path / DEFAULTS_FILE
    if not f.is_file():
        return {}
    data = read_json(f, CultureLensError)
    if not isinstance(data, dict):
        raise CultureLensError(f"{f}: expected a JSON object of generation defaults, got a JSON {type(data).__name__}")
    for key, value in data.items():
        if key not in _DEFAULT_KEYS:
            continue
        kind, minimum = _DEFAULT_KEYS[key]
        # bool is an int in Python and NaN/Infinity parse as floats: both refused.
        if kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
            want = f"an integer ≥ {minimum}"
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            want = "a finite number"
        if not ok:
            raise CultureLensError(f"{f}: {key!r} should be {want}, got {value!r}")
    return data

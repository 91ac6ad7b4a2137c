"""Saving interp result objects: `<name>.json` (tables, labels) + `<name>.safetensors` (tensors).

The one home of the atomic writers and the JSON conversion that every result object uses
(circuits.results builds on these: the import graph runs circuits -> sae -> interp). Files are
written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import CultureLensError


def jsonable(x: Any) -> Any:
    """Tensors, arrays, dataclasses, paths and non-finite floats to plain JSON values (NaN/inf -> None)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        if hasattr(x, "to_json"):
            return x.to_json()
        return {f.name: jsonable(getattr(x, f.name)) for f in dataclasses.fields(x) if not f.name.startswith("_")}
    if isinstance(x, torch.Tensor):
        return jsonable(x.detach().cpu().tolist())
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        return jsonable(x.tolist())
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a temporary file in the same folder, then os.replace: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_result(folder: str | Path, name: str, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write `folder/name.json` (meta) and `folder/name.safetensors` (tensors); returns the folder."""
    from safetensors.torch import save

    folder = Path(folder)
    atomic_write_bytes(folder / f"{name}.safetensors",
            save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"kind": name}))
    atomic_write_bytes(folder / f"{name}.json", (json.dumps(jsonable(meta), indent=1, ensure_ascii=False) + "\n").encode())
    return folder


def load_result(folder: str | Path, name: str, writer: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read back what `save_result` wrote; a missing file names the folder and who writes it."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for f in (f"{name}.json", f"{name}.safetensors"):
        if not (folder / f).is_file():
            raise CultureLensError(f"{folder / f}: missing; this folder is written by {writer}")
    return json.loads((folder / f"{name}.json").read_text()), load_file(str(folder / f"{name}.safetensors"))

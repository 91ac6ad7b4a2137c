"""Checkpoints without pickle, and resumes that refuse other settings.

A checkpoint is one safetensors file: every tensor of the saved tree is a safetensors tensor
and the rest of the tree (counters, optimiser scalars, settings) is JSON in the file's
metadata. Nothing is ever unpickled, so a checkpoint planted in an output folder cannot run
code: at worst it is refused with an error that names the file. One file (not tensors + a
JSON beside them) keeps the write atomic: a kill leaves the old checkpoint or the new one.

`settings_diff` / `check_settings` compare the settings a checkpoint was made with against
the current run's and name every field that differs, so a resume never mixes two runs.
"""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from interp.errors import CultureLensError
from interp.result_io import atomic_write_bytes

FORMAT = "culturelens-checkpoint/1"
_TREE = "culturelens_tree"
_FORMAT_KEY = "format"
_KIND_KEY = "kind"


class CheckpointError(CultureLensError):
    """A checkpoint that cannot be read or written; the message names the file."""


class ResumeMismatchError(CultureLensError):
    """A resume whose settings differ from the checkpoint's; the message names the fields."""


def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor], path: Path) -> Any:
    """The JSON side of `obj`: tensors become {"__tensor__": name}; tuples and non-string-keyed
    dicts are tagged so they come back as they were (optimiser state is keyed by int)."""
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        # clone: safetensors refuses tensors that share storage (views, tied weights)
        tensors[name] = obj.detach().cpu().clone().contiguous()
        if not obj.is_contiguous() and _dense(obj):
            # A dense permuted layout (e.g. a transposed weight and its optimiser moments) comes
            # back with the same strides, as torch.save kept them: kernels that take a layout-
            # dependent path (fused AdamW on CPU) then run exactly as in the uninterrupted run.
            return {"__tensor__": name, "stride": list(obj.stride())}
        return {"__tensor__": name}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{key}.{k}", tensors, path) for k, v in obj.items()}
        return {"__items__": [[_encode(k, key, tensors, path), _encode(v, f"{key}.{k}", tensors, path)]
                              for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{key}[{i}]", tensors, path) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}[{i}]", tensors, path) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"{path}: cannot store {key or 'the root'} of type {type(obj).__name__} in a checkpoint "
                          f"(only tensors, numbers, strings, lists, tuples and dicts)")


def _dense(t: torch.Tensor) -> bool:
    """A permutation of a contiguous layout: no gaps, no overlap."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda x: x[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _decode(obj: Any, tensors: dict[str, torch.Tensor], path: Path) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, path) for v in obj]
    if isinstance(obj, dict):
        if set(obj) in ({"__tensor__"}, {"__tensor__", "stride"}):
            name = obj["__tensor__"]
            if name not in tensors:
                raise CheckpointError(f"{path}: damaged checkpoint: the tree names tensor {name!r}, the file has none")
            t = tensors[name]
            if "stride" not in obj:
                return t
            stride = tuple(int(s) for s in obj["stride"])
            probe = torch.empty_strided(t.shape, stride, dtype=t.dtype) if len(stride) == t.dim() else None
            if probe is None or not _dense(probe):
                raise CheckpointError(f"{path}: damaged checkpoint: tensor {name!r} has an invalid stride {stride}")
            return probe.copy_(t)
        if set(obj) == {"__tuple__"}:
            return tuple(_decode(v, tensors, path) for v in obj["__tuple__"])
        if set(obj) == {"__items__"}:
            return {_decode(k, tensors, path): _decode(v, tensors, path) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors, path) for k, v in obj.items()}
    return obj


def save_checkpoint(path: str | Path, tree: dict[str, Any], kind: str) -> None:
    """Write `tree` (nested dicts/lists of tensors and plain values) to `path` atomically.

    `kind` names the job (e.g. "sae-trainer"); `load_checkpoint` refuses a file of another kind.
    A full disk is an error that names the path (not a stack of low-level frames)."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    meta = {_FORMAT_KEY: FORMAT, _KIND_KEY: kind,
            _TREE: json.dumps(_encode(tree, "", tensors, path), allow_nan=True)}
    try:
        atomic_write_bytes(path, save(tensors, metadata=meta))
    except OSError as e:
        what = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise CheckpointError(f"{path}: cannot write the checkpoint: {what}"
                              f"{' (free space, or point the output elsewhere)' if e.errno == errno.ENOSPC else ''}"
                              ) from e


def load_checkpoint(path: str | Path, kind: str) -> dict[str, Any]:
    """Read what `save_checkpoint` wrote; anything else (a pickle, a truncated file, another
    job's checkpoint) is a `CheckpointError` that names the file. Never unpickles."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a culturelens checkpoint (a safetensors file was expected; it is never "
                              f"unpickled): {e}") from e
    if meta.get(_FORMAT_KEY) != FORMAT:
        raise CheckpointError(f"{path}: not a culturelens checkpoint (metadata format {meta.get(_FORMAT_KEY)!r}, "
                              f"expected {FORMAT!r})")
    if meta.get(_KIND_KEY) != kind:
        raise CheckpointError(f"{path}: a checkpoint of {meta.get(_KIND_KEY)!r}, not of {kind!r}")
    try:
        tree = json.loads(meta[_TREE])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: damaged checkpoint metadata: {e}") from e
    return _decode(tree, tensors, path)


def refuse_legacy(path: str | Path) -> None:
    """A pickle checkpoint of an older version (`.pt`) is never loaded: it could run code."""
    path = Path(path)
    if path.exists():
        raise CheckpointError(f"{path}: a pickle checkpoint (older format or planted); it is not loaded because "
                              f"unpickling can run code. Delete it, or start over (restart)")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: list(d) if isinstance(d, tuple) else d}


def settings_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'field: saved -> current' for every (nested, dotted) field that differs or is missing."""
    a, b = _flat(saved), _flat(current)
    missing = object()
    return [f"{k}: {a.get(k, '<absent>')!r} (checkpoint) vs {b.get(k, '<absent>')!r} (this run)"
            for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]


def check_settings(saved: dict[str, Any], current: dict[str, Any], where: str | Path, restart: str) -> None:
    """Raise `ResumeMismatchError` naming each differing field; `restart` says how to start over."""
    diff = settings_diff(saved, current)
    if diff:
        raise ResumeMismatchError(f"{where}: cannot resume, this run differs from the checkpoint's settings in "
                                  f"{'; '.join(diff)}. Resume with the checkpoint's settings, or {restart} to start over")


def file_fingerprint(folder: str | Path, pattern: str = "**/*") -> str:
    """sha256 over the relative paths and bytes of every file in `folder` matching `pattern`."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(q for q in folder.glob(pattern) if q.is_file()):
        h.update(str(p.relative_to(folder)).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]

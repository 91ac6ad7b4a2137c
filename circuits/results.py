"""Shared helpers for result objects: JSON conversion and atomic writes (from interp.result_io)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from interp.result_io import atomic_write_bytes, jsonable  # noqa: F401 (re-exported)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(jsonable(obj), indent=2, ensure_ascii=False) + "\n").encode())


def save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)

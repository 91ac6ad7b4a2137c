"""Shared pieces of circuits' result objects: `Rate` (an accuracy with its bootstrap CI), JSON
conversion and atomic writes (from interp.result_io). Below every analysis that reports a rate."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp.result_io import atomic_write_bytes, jsonable  # noqa: F401 (re-exported)

from circuits.stats import accuracy_ci, mean_ci


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(jsonable(obj), indent=2, ensure_ascii=False) + "\n").encode())


def save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)


@dataclass
class Rate:
    """An accuracy with its bootstrap CI."""

    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, correct, n_boot: int = 1000, seed: int = 0, groups: Any = None) -> "Rate":
        """Share of True with a bootstrap CI over prompts (`groups`: a prompt id per sample when
        several images share a prompt; None: each sample its own prompt)."""
        return cls(*accuracy_ci([bool(x) for x in correct], n_boot=n_boot, seed=seed, groups=groups))

    @classmethod
    def of_values(cls, values, n_boot: int = 1000, seed: int = 0, groups: Any = None) -> "Rate":
        """Mean of real values (e.g. SSIM per image) with the same bootstrap CI."""
        return cls(*mean_ci(values, n_boot=n_boot, seed=seed, groups=groups))

    def pct(self) -> str:
        return f"{100 * self.mean:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}]"

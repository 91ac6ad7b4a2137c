"""The few statistics the analyses need, delegated to `interp.stats` (owned by the data
helper). Kept to thin adapters so that there is one bootstrap in the project.

Grouping is explicit: `groups` is a prompt id per sample (the seeds of one prompt resample
together) or None when each sample is its own prompt, as in `interp.stats`."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


def _stats():
    from interp import stats

    return stats


def mean_ci(x: Any, n_boot: int = 1000, ci: float = 0.95, seed: int = 0, groups: Any = None) -> tuple[float, float, float]:
    """Mean of `x` (1-D) with a percentile bootstrap CI over prompts (`groups`)."""
    r = _stats().bootstrap_ci(np.asarray(torch.as_tensor(x, dtype=torch.float64)), groups=groups, n_boot=n_boot,
                              alpha=1 - ci, seed=seed)
    return float(r.estimate), float(r.low), float(r.high)


def mean_ci_columns(x: Any, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> np.ndarray:
    """Per column of `x` [N, L]: (mean, low, high), each row its own prompt."""
    a = np.asarray(torch.as_tensor(x, dtype=torch.float64))
    return np.array([mean_ci(a[:, j], n_boot, ci, seed) for j in range(a.shape[1])])


def accuracy_ci(correct: Sequence[bool], n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
                groups: Any = None) -> tuple[float, float, float]:
    return mean_ci(np.asarray(correct, dtype=np.float64), n_boot, ci, seed, groups)


def random_control(observed: float, random_values: Sequence[float], lower_is_extreme: bool = True) -> dict[str, float]:
    """Mean and sd of the random draws and the empirical p-value of `observed` among them
    (floored at 1 / (k + 1) by the number of draws k: `p_floor`)."""
    r = _stats().random_controls(observed, list(random_values), higher_is_better=not lower_is_extreme)
    return {"mean": r.mean, "sd": r.sd, "k": r.k, "p_value": r.p_value, "p_floor": r.p_floor}


def paired_prompt_p(a: Sequence[float], b: Sequence[float], groups: Any = None) -> float:
    """Two-sided Wilcoxon signed-rank p of per-prompt a vs b (`interp.stats.paired_prompt_test`)."""
    return float(_stats().paired_prompt_test(np.asarray(a, np.float64), np.asarray(b, np.float64), groups=groups).p_value)


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> float:
    return float(_stats().mcnemar(np.asarray(a, bool), np.asarray(b, bool)).p_value)

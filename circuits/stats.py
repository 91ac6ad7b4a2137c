"""Statistics for CultureVQA results: accuracy with bootstrap CIs, confusion matrices,
paired tests between two conditions, and summaries of k random controls.

Per-sample inputs are 1-D arrays aligned across conditions (same prompts, same seeds).
Bootstraps and paired tests resample *prompts*, and the grouping is explicit: every public
function that resamples takes a keyword-only `groups` with no default — a prompt id per sample
when several images (seeds) share a prompt, so the seeds of one prompt move together, or
`groups=None` to state that every sample is its own prompt.

The analyses' thin adapters (`mean_ci`, `mean_ci_columns`, `accuracy_ci`, `random_control`,
`paired_prompt_p`, `mcnemar_p`) sit at the end: tuples and floats over the same bootstrap, so
there is one bootstrap in the project.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from scipy import stats as sps

from circuits.data.culturebench.constants import LABELS
from interp.errors import CultureLensError


class StatsError(CultureLensError):
    """Inputs that cannot be compared (length mismatch, unknown label, empty)."""


@dataclass(frozen=True)
class Interval:
    """A point estimate with a (1 - alpha) confidence interval."""

    estimate: float
    low: float
    high: float
    alpha: float = 0.05

    def __str__(self) -> str:
        return f"{self.estimate:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclass(frozen=True)
class TestResult:
    """A paired test: statistic, two-sided p-value and what it was computed from."""

    statistic: float
    p_value: float
    method: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class ControlSummary:
    """The real condition against k random controls."""

    real: float
    mean: float
    sd: float
    k: int
    p_value: float  # (1 + #controls at least as extreme) / (k + 1)

    @property
    def p_floor(self) -> float:
        """The smallest empirical p k draws can give: 1 / (k + 1) (1/11 for the paper's 10)."""
        return 1.0 / (self.k + 1)

    def __str__(self) -> str:
        return f"real {self.real:.4f} vs controls {self.mean:.4f} ± {self.sd:.4f} (k={self.k}, p={self.p_value:.4g})"


def _as_1d(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    if arr.ndim != 1:
        raise StatsError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise StatsError(f"{name} is empty")
    return arr


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise StatsError(f"inputs differ in length: {lengths}")


def _label_index(labels: Any, name: str, vocab: Sequence[str]) -> np.ndarray:
    arr = _as_1d(labels, name)
    if arr.dtype.kind in "iu":
        bad = np.flatnonzero((arr < 0) | (arr >= len(vocab)))
        if bad.size:
            raise StatsError(f"{name}[{bad[0]}] = {arr[bad[0]]} is not a label index 0..{len(vocab) - 1}")
        return arr.astype(np.int64)
    lookup = {l: i for i, l in enumerate(vocab)}
    out = np.empty(len(arr), dtype=np.int64)
    for i, v in enumerate(arr):
        if v not in lookup:
            raise StatsError(f"{name}[{i}] = {str(v)!r} is not one of {list(vocab)}")
        out[i] = lookup[v]
    return out


def correct(pred: Any, target: Any, labels: Sequence[str] = LABELS) -> Bool[np.ndarray, "n"]:
    """Per-sample correctness; labels may be strings or indices into `labels`."""
    p, t = _label_index(pred, "pred", labels), _label_index(target, "target", labels)
    _same_length(pred=p, target=t)
    return p == t


def _group_index(groups: Any, n: int) -> tuple[np.ndarray, int]:
    """Group (prompt) number of each sample, and the number of groups; None: one per sample."""
    if groups is None:
        return np.arange(n), n
    g = _as_1d(groups, "groups")
    if len(g) != n:
        raise StatsError(f"groups has length {len(g)}, values have length {n}")
    _, inv = np.unique(g, return_inverse=True)
    return inv, int(inv.max()) + 1


def _bootstrap_means(
    values: np.ndarray, groups: Any, n_boot: int, seed: int, chunk: int = 256
) -> np.ndarray:
    """Means of `values` over `n_boot` resamples of groups (prompts), with replacement."""
    inv, g = _group_index(groups, len(values))
    sums = np.bincount(inv, weights=values.astype(np.float64), minlength=g)
    counts = np.bincount(inv, minlength=g).astype(np.float64)
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        # Multinomial counts are equivalent to drawing g groups with replacement.
        w = rng.multinomial(g, np.full(g, 1.0 / g), size=b)
        out[start:start + b] = (w @ sums) / (w @ counts)
    return out


def bootstrap_ci(
    values: Float[np.ndarray, "n"] | Sequence[float],
    *,
    groups: Any,
    n_boot: int = 10_000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Interval:
    """Mean of `values` (e.g. 0/1 correctness) with a percentile bootstrap CI over prompts
    (`groups`: a prompt id per value, or None when each value is its own prompt)."""
    v = _as_1d(values, "values").astype(np.float64)
    boots = _bootstrap_means(v, groups, n_boot, seed)
    low, high = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return Interval(float(v.mean()), float(low), float(high), alpha)


def accuracy(
    pred: Any, target: Any, *, groups: Any, n_boot: int = 10_000, alpha: float = 0.05,
    seed: int = 0, labels: Sequence[str] = LABELS,
) -> Interval:
    """Accuracy with a bootstrap CI over prompts."""
    return bootstrap_ci(correct(pred, target, labels), groups=groups, n_boot=n_boot, alpha=alpha, seed=seed)


def per_culture_accuracy(
    pred: Any, target: Any, *, groups: Any, n_boot: int = 2_000, alpha: float = 0.05,
    seed: int = 0, labels: Sequence[str] = LABELS,
) -> dict[str, Interval]:
    """Accuracy per intended culture (only cultures present in `target`), with CIs."""
    ok = correct(pred, target, labels)
    t = _label_index(target, "target", labels)
    g = None if groups is None else _as_1d(groups, "groups")
    out = {}
    for i, name in enumerate(labels):
        m = t == i
        if m.any():
            out[name] = bootstrap_ci(ok[m], groups=None if g is None else g[m], n_boot=n_boot, alpha=alpha, seed=seed)
    return out


def confusion_matrix(
    pred: Any, target: Any, labels: Sequence[str] = LABELS
) -> Int[np.ndarray, "n_labels n_labels"]:
    """Counts: row = intended label, column = judged label."""
    p, t = _label_index(pred, "pred", labels), _label_index(target, "target", labels)
    _same_length(pred=p, target=t)
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def plot_confusion(
    cm: Int[np.ndarray, "n n"], labels: Sequence[str] = LABELS, path: str | Path | None = None,
    title: str = "CultureVQA confusion (rows: intended, columns: judged)",
) -> Any:
    """Row-normalised confusion heatmap with counts; saved to `path` when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    short = [l if l != LABELS[-1] else "unrec." for l in labels]
    ax.set_xticks(range(len(labels)), short, rotation=90)
    ax.set_yticks(range(len(labels)), short)
    ax.set_xlabel("judged")
    ax.set_ylabel("intended")
    for i, j in zip(*np.nonzero(cm)):
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6,
                color="white" if frac[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of row")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig


def mcnemar(
    a_correct: Bool[np.ndarray, "n"] | Sequence[bool],
    b_correct: Bool[np.ndarray, "n"] | Sequence[bool],
    *, exact: bool | None = None,
) -> TestResult:
    """McNemar's test on paired correctness. Exact binomial when `exact` (default: when the
    discordant count b + c < 25), else chi-square with continuity correction."""
    a = _as_1d(a_correct, "a_correct").astype(bool)
    b = _as_1d(b_correct, "b_correct").astype(bool)
    _same_length(a_correct=a, b_correct=b)
    n01 = int((a & ~b).sum())  # a right, b wrong
    n10 = int((~a & b).sum())
    n = n01 + n10
    use_exact = n < 25 if exact is None else exact
    if n == 0:
        return TestResult(0.0, 1.0, "mcnemar-exact" if use_exact else "mcnemar-chi2", {"b": n01, "c": n10})
    if use_exact:
        p = float(min(1.0, 2 * sps.binom.cdf(min(n01, n10), n, 0.5)))
        return TestResult(float(min(n01, n10)), p, "mcnemar-exact", {"b": n01, "c": n10})
    stat = (abs(n01 - n10) - 1) ** 2 / n
    return TestResult(float(stat), float(sps.chi2.sf(stat, 1)), "mcnemar-chi2", {"b": n01, "c": n10})


def paired_bootstrap(
    a: Float[np.ndarray, "n"] | Sequence[float],
    b: Float[np.ndarray, "n"] | Sequence[float],
    *, groups: Any, n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0,
) -> TestResult:
    """Paired bootstrap of mean(a - b) over prompts (`groups`, as in `bootstrap_ci`): CI and a
    two-sided p-value (twice the smaller share of resampled differences on either side of
    zero; it cannot go below 2 / (n_boot + 1))."""
    x = _as_1d(a, "a").astype(np.float64)
    y = _as_1d(b, "b").astype(np.float64)
    _same_length(a=x, b=y)
    d = x - y
    boots = _bootstrap_means(d, groups, n_boot, seed)
    low, high = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2 * min((1 + (boots <= 0).sum()) / (n_boot + 1), (1 + (boots >= 0).sum()) / (n_boot + 1)))
    return TestResult(float(d.mean()), float(p), "paired-bootstrap",
                      {"ci": Interval(float(d.mean()), float(low), float(high), alpha), "n_boot": n_boot})


def random_controls(
    real: float, controls: Sequence[float] | Float[np.ndarray, "k"], *, higher_is_better: bool = True
) -> ControlSummary:
    """Mean ± sd of k random-control scores and the empirical p-value of the real score:
    (1 + #controls at least as good) / (k + 1)."""
    c = _as_1d(np.asarray(controls, dtype=np.float64), "controls")
    if not math.isfinite(real):
        raise StatsError(f"real score is not finite: {real}")
    as_good = (c >= real) if higher_is_better else (c <= real)
    sd = float(c.std(ddof=1)) if len(c) > 1 else 0.0
    return ControlSummary(float(real), float(c.mean()), sd, len(c), float((1 + as_good.sum()) / (len(c) + 1)))


def group_means(values: Float[np.ndarray, "n"] | Sequence[float], groups: Any) -> Float[np.ndarray, "g"]:
    """Mean of `values` within each group (prompt), groups in sorted-id order."""
    v = _as_1d(values, "values").astype(np.float64)
    inv, g = _group_index(groups, len(v))
    return np.bincount(inv, weights=v, minlength=g) / np.bincount(inv, minlength=g)


def paired_prompt_test(
    a: Float[np.ndarray, "n"] | Sequence[float],
    b: Float[np.ndarray, "n"] | Sequence[float],
    *, groups: Any,
) -> TestResult:
    """Paired per-prompt test of a against b: the mean difference a - b within each prompt
    (`groups`; the seeds of a prompt are averaged first), then a two-sided Wilcoxon signed-rank
    test over prompts (zero differences dropped, as Wilcoxon does; exact for few prompts, normal
    approximation otherwise). `b` may be a pooled control: e.g. per prompt, the share of k random
    draws that judged it correct. Unlike the empirical p of k draws, its p is not floored at
    1/(k + 1): with n prompts that all move the same way it reaches ~2^(1-n)."""
    x = _as_1d(a, "a").astype(np.float64)
    y = _as_1d(b, "b").astype(np.float64)
    _same_length(a=x, b=y)
    d = group_means(x - y, groups)
    nz = d[d != 0]
    detail = {"n_prompts": int(len(d)), "n_nonzero": int(len(nz)), "mean_difference": float(d.mean())}
    if len(nz) == 0:
        return TestResult(0.0, 1.0, "wilcoxon-signed-rank", detail)
    r = sps.wilcoxon(nz)
    return TestResult(float(r.statistic), float(r.pvalue), "wilcoxon-signed-rank", detail)


# -- adapters for the analyses: tuples and floats over the functions above --------------------------
def mean_ci(x: Any, n_boot: int = 1000, ci: float = 0.95, seed: int = 0, groups: Any = None) -> tuple[float, float, float]:
    """Mean of `x` (1-D) with a percentile bootstrap CI over prompts (`groups`)."""
    r = bootstrap_ci(np.asarray(torch.as_tensor(x, dtype=torch.float64)), groups=groups, n_boot=n_boot,
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
    r = random_controls(observed, list(random_values), higher_is_better=not lower_is_extreme)
    return {"mean": r.mean, "sd": r.sd, "k": r.k, "p_value": r.p_value, "p_floor": r.p_floor}


def paired_prompt_p(a: Sequence[float], b: Sequence[float], groups: Any = None) -> float:
    """Two-sided Wilcoxon signed-rank p of per-prompt a vs b (`circuits.stats.paired_prompt_test`)."""
    return float(paired_prompt_test(np.asarray(a, np.float64), np.asarray(b, np.float64), groups=groups).p_value)


def mcnemar_p(a: Sequence[bool], b: Sequence[bool]) -> float:
    """McNemar's p-value of paired correctness `a` vs `b` (`mcnemar(a, b).p_value` as a float)."""
    return float(mcnemar(np.asarray(a, bool), np.asarray(b, bool)).p_value)

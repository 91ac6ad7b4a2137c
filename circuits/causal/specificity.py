"""Are culture units culture-specific? A culture x culture matrix, and unit overlap with counts.

Masking culture A's units might erase "culture-ness" for every culture rather than A's culture
in particular; one shared latent can sit among the top units of many cultures. So:

- **mask** mode: mask A's units on the concept prompts of every culture B and judge CultureVQA
  for B. Effect E[A, B] = baseline CultureVQA of B − masked CultureVQA of B (a drop).
- **amplify** mode: amplify A's units by (1 + λ) on the noun-only prompts of every culture B.
  Effect E[A, B] = share of B's images judged as culture A − the same share without the
  amplifier (how far A's units pull B's prompts towards A).

Specificity index SI = (D − O) / (|D| + |O|), with D the mean diagonal effect (A = B) and O the
mean off-diagonal effect (A ≠ B): 1 = A's units act on A's culture only, 0 = they act on every
culture alike, < 0 = they act on other cultures more. Its 95 % CI resamples prompts within each
culture B (the same resample for every A, so conditions stay paired).
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import numpy as np
from interp.progress import bar, switch

from interp.checks import moved, renamed
from interp.errors import CultureLensError
from interp.result_io import DataclassResult

from circuits.evaluate import SETTINGS_FIELDS, ScoreSettings
from circuits.pairs import as_pairs, by_concept
from circuits.plots import plot_matrix
from circuits.results import jsonable
from circuits.locate.units import CultureUnits, as_culture_units

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MODES = ("mask", "amplify")


@dataclass
class Specificity(DataclassResult):
    """matrix[a][b]: CultureVQA of culture b's prompts under culture a's units (mask mode), or the
    share of b's images judged as a (amplify mode); baseline[a][b] the same without intervention.
    `save(folder)` writes specificity.json (`to_json`) and specificity.safetensors."""

    result_name: ClassVar[str] = "specificity"

    mode: str
    cultures: list[str]
    matrix: list[list[float]]
    baseline: list[list[float]]
    effect: list[list[float]]        # E[a][b] as defined in the module docstring
    diagonal: float                  # D: mean effect on the culture's own prompts
    off_diagonal: float              # O: mean effect on other cultures' prompts
    index: float                     # SI = (D - O) / (|D| + |O|)
    index_ci: tuple[float, float]
    n_per_culture: dict[str, int]
    lam: float | None = None
    label: str = ""

    def to_json(self) -> dict[str, Any]:
        return jsonable(self.__dict__)

    def table(self) -> str:
        """Deprecated: `to_markdown()`."""
        warnings.warn("Specificity.table() is deprecated; use to_markdown()", DeprecationWarning, stacklevel=2)
        return self.to_markdown()

    def to_markdown(self, heading: str | None = None) -> str:
        """D, O and the specificity index with its CI, then the largest off-diagonal effects;
        `heading` (a Markdown heading line) first when given."""
        what = ("CultureVQA drop (points) when A's units are masked" if self.mode == "mask" else
                f"gain in the share judged as A (points) when A's units are amplified (λ = {self.lam:g})")
        worst = sorted(((self.effect[a][b], self.cultures[a], self.cultures[b]) for a in range(len(self.cultures))
                        for b in range(len(self.cultures)) if a != b), reverse=True)[:3]
        body = (f"| {self.label or self.mode} | mean effect on own culture (D) | mean effect on other cultures (O) | "
                f"specificity index SI [95% CI] |\n|---|---|---|---|\n"
                f"| {what} | {100 * self.diagonal:.1f} | {100 * self.off_diagonal:.1f} | "
                f"{self.index:.2f} [{self.index_ci[0]:.2f}, {self.index_ci[1]:.2f}] |\n\n"
                f"Largest off-diagonal effects (A → B): " +
                ", ".join(f"{a} → {b}: {100 * e:.1f}" for e, a, b in worst) + ".")
        return body if heading is None else f"{heading}\n\n{body}"

    def plot(self, path: str | Path | None = None) -> Figure:
        """The effect matrix E[A, B] in points, diverging around 0."""
        title = ("mask A's units: CultureVQA drop on B's prompts" if self.mode == "mask"
                 else f"amplify A's units (λ={self.lam:g}): gain in 'judged as A' on B's prompts")
        return plot_matrix(self.cultures, (100 * np.asarray(self.effect)).tolist(), path, title,
                           xlabel="prompts of culture B", ylabel="units of culture A")


def _index(effect: np.ndarray) -> tuple[float, float, float]:
    n = effect.shape[0]
    off = ~np.eye(n, dtype=bool)
    d, o = float(np.mean(np.diag(effect))), float(effect[off].mean())
    den = abs(d) + abs(o)
    return d, o, (d - o) / den if den > 0 else 0.0


def specificity_index(outcome: Sequence[np.ndarray], base: Sequence[np.ndarray], n_boot: int = 1000, seed: int = 0,
                      sign: float = 1.0) -> tuple[np.ndarray, float, float, float, tuple[float, float]]:
    """From per-prompt outcomes: `outcome[b]` [A, n_b] (0/1 under each A's units on culture b's
    prompts) and `base[b]` [A, n_b] (the same without intervention). Effect = sign * (outcome −
    base), averaged per cell. Returns (effect [A, B], D, O, SI, SI 95 % CI), the CI resampling
    each culture's prompts (one resample shared by every A)."""
    nb = len(outcome)
    diff = [sign * (np.asarray(o, np.float64) - np.asarray(b, np.float64)) for o, b in zip(outcome, base)]
    effect = np.stack([d.mean(1) for d in diff], 1)       # [A, B]
    d, o, si = _index(effect)
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for i in range(n_boot):
        e = np.stack([diff[b][:, rng.integers(0, diff[b].shape[1], diff[b].shape[1])].mean(1) for b in range(nb)], 1)
        boots[i] = _index(e)[2]
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return effect, d, o, si, (float(lo), float(hi))


@renamed(steps="num_steps")
@moved(ScoreSettings, *SETTINGS_FIELDS, param="settings", where="circuits.causal.specificity.specificity_matrix")
@switch
def specificity_matrix(
    model,
    units: CultureUnits | dict[str, Any],
    pairs: Sequence[Any],
    judge: Callable,
    mode: str = "mask",
    lam: float = 6.0,
    *,
    settings: ScoreSettings | None = None,
    label: str = "",
    progress: bool = True,
) -> Specificity:
    """The culture x culture matrix (module docstring): for each culture A with units, its units
    masked (`mode="mask"`, concept prompts) or amplified by (1 + `lam`) (`mode="amplify"`,
    noun-only prompts) on the prompts of every culture B in `pairs`; one unmodified run as the
    baseline. Costs (cultures + 1) x len(pairs) images of `settings.num_steps` denoising steps
    (`circuits.ScoreSettings`; None: its defaults)."""
    from circuits.causal.amplify import amplify
    from circuits.evaluate import score
    from circuits.causal.validate import masked_interventions

    st = ScoreSettings() if settings is None else settings
    if mode not in MODES:
        raise CultureLensError(f"specificity_matrix: mode {mode!r}; use one of {MODES}")
    units = as_culture_units(units)
    groups = by_concept(as_pairs(pairs))
    names = [c for c in groups if c in units.cultures and units.cultures[c].indices]
    if len(names) < 2:
        raise CultureLensError(f"specificity_matrix: need at least 2 cultures with units among the prompts' "
                               f"cultures {sorted(groups)}; have units for {sorted(units.cultures)}")
    groups = {c: groups[c] for c in names}
    prompt = "concept" if mode == "mask" else "noun"
    def run(ivs, desc):
        return score(model, groups, judge, ivs, prompt, None, settings=st, desc=desc)

    base = run(None, "baseline")
    cuts = np.cumsum([0] + [len(groups[c]) for c in names])

    def per_b(flags):
        return [np.asarray(flags[cuts[j]:cuts[j + 1]], np.float64) for j in range(len(names))]

    if mode == "mask":
        base_b = per_b(base.correct.numpy())
        outcome = [np.zeros((len(names), len(groups[b]))) for b in names]
        base_ab = [np.tile(x, (len(names), 1)) for x in base_b]
    else:
        outcome = [np.zeros((len(names), len(groups[b]))) for b in names]
        base_ab = [np.zeros((len(names), len(groups[b]))) for b in names]
        for a, ca in enumerate(names):
            for j, x in enumerate(per_b([p == ca for p in base.predicted])):
                base_ab[j][a] = x
    for a, ca in enumerate(bar(names, desc=f"specificity ({mode})")):
        ivs = (lambda c, ca=ca: masked_interventions(units, ca)) if mode == "mask" else \
            (lambda c, ca=ca: [amplify(units, lam, culture=ca)])
        s = run(ivs, f"{mode} {ca}")
        flags = s.correct.numpy() if mode == "mask" else np.array([p == ca for p in s.predicted])
        for j, x in enumerate(per_b(flags)):
            outcome[j][a] = x
    sign = -1.0 if mode == "mask" else 1.0
    effect, d, o, si, ci = specificity_index(outcome, base_ab, st.n_boot, st.seed, sign)
    matrix = np.stack([x.mean(1) for x in outcome], 1)
    baseline = np.stack([x.mean(1) for x in base_ab], 1)
    return Specificity(mode, names, matrix.tolist(), baseline.tolist(), effect.tolist(), d, o, si, ci,
                       {c: len(groups[c]) for c in names}, lam if mode == "amplify" else None, label)


def overlap_counts(units: CultureUnits | dict[str, Any], top: int = 8) -> dict[str, Any]:
    """How many cultures share each unit: the number of distinct units, how many belong to 2 or
    more cultures, the `top` most shared units with their cultures, and the culture x culture
    count of shared units."""
    units = as_culture_units(units)
    names = list(units.cultures)
    sets = {c: set(units.cultures[c].indices) for c in names}
    count = Counter(i for s in sets.values() for i in s)
    shared = sorted(((n, i) for i, n in count.items() if n > 1), key=lambda t: (-t[0], t[1]))
    return {
        "n_units": sum(len(s) for s in sets.values()),
        "n_distinct": len(count),
        "n_shared": len(shared),
        "max_cultures": max(count.values(), default=0),
        "histogram": {str(k): v for k, v in sorted(Counter(count.values()).items())},
        "most_shared": [{"unit": i, "n_cultures": n, "cultures": [c for c in names if i in sets[c]]} for n, i in shared[:top]],
        "pairwise": {"cultures": names, "shared": [[len(sets[a] & sets[b]) for b in names] for a in names]},
    }


def overlap_markdown(o: dict[str, Any], label: str = "units") -> str:
    """One paragraph: distinct units, how many are shared, the most shared ones."""
    top = "; ".join(f"{m['unit']} in {m['n_cultures']} ({', '.join(m['cultures'])})" for m in o["most_shared"][:5])
    hist = ", ".join(f"{n} units in {k} culture{'s' if k != '1' else ''}" for k, n in o["histogram"].items())
    return (f"Overlap of the {label}: {o['n_units']} culture-unit slots hold {o['n_distinct']} distinct units; "
            f"{o['n_shared']} belong to 2 or more cultures (up to {o['max_cultures']}). By count: {hist}."
            + (f" Most shared: {top}." if top else ""))

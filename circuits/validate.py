"""Causal validation (PAPER.md Step 3): baseline vs Top-K units masked vs the same number of
random units masked (n_random seeded draws), CultureVQA with CIs and an empirical p-value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from interp.errors import CultureLensError

from .amplify import Rate, random_indices, scale_units
from .pairs import as_pairs, by_concept
from .results import jsonable, write_json
from .units import CultureUnits, as_culture_units


@dataclass
class Validation:
    """The paper's Table 1 on our data: one row per condition."""

    baseline: Rate
    masked: Rate
    random_draws: list[float]
    random_mean: float
    random_sd: float
    p_value: float                  # empirical: share of random draws at or below the Top-K accuracy (+1 smoothing)
    mcnemar_p: float                # baseline vs Top-K masked, paired on the same prompts and seeds
    n_prompts: int
    n_random: int
    per_culture: dict[str, dict[str, float]]
    noun: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return jsonable(self.__dict__)

    def table(self) -> str:
        """Markdown table in the shape of the paper's Table 1 (CultureVQA in %)."""
        f = lambda r: f"{100 * r.mean:.2f} [{100 * r.low:.2f}, {100 * r.high:.2f}]"  # noqa: E731
        rows = [
            "| condition | CultureVQA % (95% CI) |",
            "|---|---|",
            f"| baseline | {f(self.baseline)} |",
            f"| Top-K units masked | {f(self.masked)} |",
            f"| random units masked ({self.n_random} draws, mean ± sd) | {100 * self.random_mean:.2f} ± {100 * self.random_sd:.2f} |",
        ]
        rows.append(f"\nEmpirical p (random ≤ Top-K): {self.p_value:.3g}; McNemar baseline vs Top-K: {self.mcnemar_p:.3g}; n = {self.n_prompts} prompts.")
        return "\n".join(rows)

    def save(self, path) -> None:
        write_json(path, self)

    def plot(self, path) -> None:
        from .plots import plot_bars

        sd = self.random_sd
        plot_bars(["baseline", "Top-K masked", "random masked"],
                  [self.baseline.mean, self.masked.mean, self.random_mean],
                  [self.baseline.low, self.masked.low, self.random_mean - sd],
                  [self.baseline.high, self.masked.high, self.random_mean + sd], path,
                  title="masking culture units", scatter={2: self.random_draws})


def masked_interventions(units: CultureUnits, culture: str, random_seed: int | None = None, model: Any = None,
                         keep_error: bool = True) -> list[Any]:
    """Mask one culture's units (or a seeded random set of the same size); SAE latents are
    zeroed through sae.Steer with the error kept."""
    u = units.cultures.get(culture)
    if u is None:
        raise CultureLensError(f"no units for culture {culture!r}; have {sorted(units.cultures)}")
    if not u.indices:
        return []
    idx = u.indices if random_seed is None else random_indices(units.basis, model, u.indices, random_seed)
    return [scale_units(units.basis, idx, -1.0, keep_error, label=f"{culture}:mask")]


def validate_units(
    model,
    units: CultureUnits | dict[str, Any],
    prompts: Sequence[Any],
    judge: Callable,
    n_random: int = 10,
    noun_judge: Callable | None = None,
    seed: int = 0,
    steps: int | None = None,
    batch_size: int = 8,
    n_boot: int = 1000,
) -> Validation:
    """Generate the concept (modifier + noun) prompts under three conditions and judge them.
    `units`: a `CultureUnits` (any basis) or a dict culture -> `interp.Units` of native neurons.
    Random draw r uses seed `seed + 1 + r` for the units; image noise is the same everywhere."""
    from . import stats_bridge as sb
    from .evaluate import score

    if n_random < 1:
        raise CultureLensError(f"validate_units: n_random must be >= 1; got {n_random}")
    units = as_culture_units(units)
    groups = by_concept(as_pairs(prompts))
    base = score(model, groups, judge, None, "concept", noun_judge, seed, steps, batch_size, desc="baseline")
    mask = score(model, groups, judge, lambda c: masked_interventions(units, c), "concept", noun_judge, seed, steps,
                 batch_size, desc="Top-K masked")
    draws, noun_draws = [], []
    for r in tqdm(range(n_random), desc="random masks"):
        s = score(model, groups, judge, lambda c: masked_interventions(units, c, seed + 1 + r, model), "concept",
                  noun_judge, seed, steps, batch_size, desc=f"random {r}")
        draws.append(s.correct.float().mean().item())
        if s.noun_correct is not None:
            noun_draws.append(s.noun_correct.float().mean().item())
    rc = sb.random_control(mask.correct.float().mean().item(), draws, lower_is_extreme=True)
    t = torch.tensor(draws, dtype=torch.float64)
    per = {}
    start = 0
    for c, ps in groups.items():
        sl = slice(start, start + len(ps))
        start += len(ps)
        per[c] = {"baseline": base.correct[sl].float().mean().item(), "masked": mask.correct[sl].float().mean().item(),
                  "n_units": len(units.cultures[c].indices) if c in units.cultures else 0, "n": len(ps)}
    noun = None
    if base.noun_correct is not None:
        noun = {"baseline": base.noun_correct.float().mean().item(), "masked": mask.noun_correct.float().mean().item(),
                "random_mean": sum(noun_draws) / len(noun_draws)}
    return Validation(
        baseline=Rate.of(base.correct, n_boot, seed), masked=Rate.of(mask.correct, n_boot, seed),
        random_draws=draws, random_mean=t.mean().item(), random_sd=t.std().item() if n_random > 1 else 0.0,
        p_value=float(rc.get("p_value", rc.get("p"))), mcnemar_p=sb.mcnemar(base.correct.tolist(), mask.correct.tolist()),
        n_prompts=len(base.ids), n_random=n_random, per_culture=per, noun=noun,
    )

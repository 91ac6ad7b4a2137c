"""Causal validation (PAPER.md Step 3): baseline vs Top-K units masked vs the same number of
random units masked, CultureVQA with CIs. Two controls (decision 10): the paper's uniform draw
(`n_random` seeded draws) and an activity-matched draw (`n_matched`), each with how much every
draw changes the site's activation relative to the detected units, the empirical p (floored at
1/(k+1) by k draws) and a paired per-prompt test against the pooled draws (`circuits.causal.controls`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from interp.progress import bar, switch

from interp.checks import moved, renamed
from interp.errors import CultureLensError
from interp.result_io import DataclassResult

from circuits import stats as sb
from circuits.causal.controls import KINDS, Control, run_control
from circuits.causal.edits import random_indices, scale_units
from circuits.evaluate import SETTINGS_FIELDS, ScoreSettings, score, site_change
from circuits.pairs import as_pairs, by_concept
from circuits.plots import plot_bars
from circuits.results import Rate, jsonable
from circuits.locate.units import CultureUnits, as_culture_units

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class Validation(DataclassResult):
    """The paper's Table 1 on our data: one row per condition. `random_*` and `p_value` are the
    paper's uniform control (kept for older readers); `controls` holds every control.
    `save(folder)` writes validation.json (`to_json`) and validation.safetensors."""

    result_name: ClassVar[str] = "validation"

    baseline: Rate
    masked: Rate
    random_draws: list[float]
    random_mean: float
    random_sd: float
    p_value: float                  # empirical, uniform control: share of draws at or below Top-K (+1 smoothing)
    mcnemar_p: float                # baseline vs Top-K masked, paired on the same prompts and seeds
    n_prompts: int
    n_random: int
    per_culture: dict[str, dict[str, float]]
    noun: dict[str, float] | None = None
    controls: dict[str, Control] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return jsonable(self.__dict__)

    def table(self) -> str:
        """Deprecated: `to_markdown()`."""
        warnings.warn("Validation.table() is deprecated; use to_markdown()", DeprecationWarning, stacklevel=2)
        return self.to_markdown()

    def to_markdown(self, heading: str | None = None) -> str:
        """Markdown table in the shape of the paper's Table 1 (CultureVQA in %), with noun
        accuracy and each control's site change relative to the Top-K units; `heading` (a
        Markdown heading line) first when given."""
        noun = self.noun or {}

        def n(k):
            return f"{100 * noun[k]:.1f}" if k in noun else "–"
        rows = [
            "| condition | CultureVQA % (95% CI) | noun acc % | site change vs Top-K (per draw: median [min, max]) |",
            "|---|---|---|---|",
            f"| baseline | {self.baseline.pct()} | {n('baseline')} | 0 |",
            f"| Top-K units masked | {self.masked.pct()} | {n('masked')} | 1 |",
        ]
        for kind, c in self.controls.items():
            nm = f"{100 * sum(c.noun) / len(c.noun):.1f}" if c.noun else "–"
            rows.append(f"| {c.label()} | {100 * c.mean:.1f} ± {100 * c.sd:.1f} | {nm} | {c.ratio_text()} |")
        lines = rows + ["", f"n = {self.n_prompts} prompts, one image each (bootstrap over prompts). "
                        f"McNemar baseline vs Top-K: p = {self.mcnemar_p:.3g}."]
        for kind, c in self.controls.items():
            lines.append(f"- {c.label().split(' (')[0]}: empirical p (a draw at or below Top-K) = {c.p_empirical:.3g} "
                         f"(the floor with {c.k} draws is 1/{c.k + 1} = {c.p_floor:.3g}); paired per-prompt Wilcoxon, "
                         f"Top-K vs the pooled draws: p = {c.p_paired:.3g}. Per-draw CultureVQA % "
                         f"{[round(100 * x, 1) for x in c.draws]}; site change {[round(x, 3) for x in c.act_ratio]}.")
        return "\n".join(([] if heading is None else [heading, ""]) + lines)

    def plot(self, path: str | Path | None = None) -> Figure:
        """Baseline and Top-K masked CultureVQA with CIs, then each control's draws (mean ± sd)."""
        labels, vals, lows, highs, scatter = ["baseline", "Top-K masked"], [self.baseline.mean, self.masked.mean], \
            [self.baseline.low, self.masked.low], [self.baseline.high, self.masked.high], {}
        for kind, c in self.controls.items():
            scatter[len(labels)] = c.draws
            labels.append(f"{kind} random")
            vals.append(c.mean)
            lows.append(c.mean - c.sd)
            highs.append(c.mean + c.sd)
        return plot_bars(labels, vals, lows, highs, path, title="masking culture units", scatter=scatter)


def reference_activity(model, units: CultureUnits, prompts: Sequence[str], batch_size: int = 16
                       ) -> Float[Tensor, "n M"]:
    """Unit activations per content token on `prompts` (e.g. the probe pairs' concept prompts):
    the reference for activity-matched controls."""
    from circuits.locate.units import unit_rows

    return unit_rows(model, units.basis, list(prompts), pool="tokens", batch_size=batch_size, desc="reference activity")


def masked_interventions(units: CultureUnits, culture: str, random_seed: int | None = None, model: Any = None,
                         keep_error: bool = True, match: str | None = None, reference: Any = None) -> list[Any]:
    """Mask one culture's units (or a seeded random set of the same size: `match`/`reference` as in
    `circuits.causal.edits.random_indices`); SAE latents are zeroed through sae.Steer with the error kept."""
    u = units.cultures.get(culture)
    if u is None:
        raise CultureLensError(f"no units for culture {culture!r}; have {sorted(units.cultures)}")
    if not u.indices:
        return []
    idx = u.indices if random_seed is None else random_indices(units.basis, model, u.indices, random_seed, match, reference)
    return [scale_units(units.basis, idx, -1.0, keep_error, label=f"{culture}:mask")]


@renamed(steps="num_steps")
@moved(ScoreSettings, *SETTINGS_FIELDS, param="settings", where="circuits.validate_units")
@switch
def validate_units(
    model,
    units: CultureUnits | dict[str, Any],
    prompts: Sequence[Any],
    judge: Callable,
    n_random: int = 10,
    noun_judge: Callable | None = None,
    *,
    settings: ScoreSettings | None = None,
    n_matched: int = 0,
    reference: Any = None,
    progress: bool = True,
) -> Validation:
    """Generate the concept (modifier + noun) prompts under baseline, Top-K masked and the random
    controls, and judge them. `units`: a `CultureUnits` (any basis) or a dict culture ->
    `interp.Units` of native neurons. `n_random` uniform draws (the paper's control) and
    `n_matched` activity-matched draws (`reference`: unit activations on the probe prompts,
    `reference_activity`). `settings` (`circuits.ScoreSettings`; None: its defaults): draw r
    uses seed `settings.seed + 1 + r`; image noise is the same everywhere; `settings.num_steps`
    denoising steps per image (None: the model's); CIs from `settings.n_boot` resamples."""
    st = ScoreSettings() if settings is None else settings
    seed, batch_size, n_boot = st.seed, st.batch_size, st.n_boot
    if n_random < 1:
        raise CultureLensError(f"validate_units: n_random must be >= 1; got {n_random}")
    if n_matched and reference is None:
        raise CultureLensError("validate_units: n_matched > 0 needs reference= unit activations (reference_activity)")
    units = as_culture_units(units)
    groups = by_concept(as_pairs(prompts))
    gen = dict(prompt="concept", noun_judge=noun_judge, settings=st)
    base = score(model, groups, judge, None, desc="baseline", **gen)
    def top(c):
        return masked_interventions(units, c)

    def random_masks(kind, r):
        """The interventions of random draw `r` of control `kind`, per culture."""
        def per_culture(c):
            return masked_interventions(units, c, seed + 1 + r, model, match=KINDS[kind], reference=reference)
        return per_culture

    mask = score(model, groups, judge, top, desc="Top-K masked", **gen)
    change = site_change(model, groups, top, "concept", max(batch_size, 16))
    controls = {}
    for kind, k in (("uniform", n_random), ("activity", n_matched)):
        if k < 1:
            continue
        controls[kind] = run_control(
            kind, k, lambda r: score(model, groups, judge, random_masks(kind, r), desc=f"{kind} random {r}", **gen),
            lambda r: site_change(model, groups, random_masks(kind, r), "concept", max(batch_size, 16)), mask, change,
            lower_is_extreme=True)
    uni = controls["uniform"]
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
                "random_mean": sum(uni.noun) / len(uni.noun)}
    return Validation(
        baseline=Rate.of(base.correct, n_boot, seed), masked=Rate.of(mask.correct, n_boot, seed),
        random_draws=uni.draws, random_mean=uni.mean, random_sd=uni.sd, p_value=float(uni.p_empirical),
        mcnemar_p=sb.mcnemar_p(base.correct.tolist(), mask.correct.tolist()),
        n_prompts=len(base.ids), n_random=n_random, per_culture=per, noun=noun, controls=controls,
    )

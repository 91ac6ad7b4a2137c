"""Unit interventions (mask, amplify) over either basis, the zero-training amplifier
(PAPER.md Step 4a) and its lambda sweep with the random-units control."""

from __future__ import annotations

import math
import warnings

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import torch
from interp.progress import bar, switch

from interp.checks import moved, renamed
from interp.errors import CultureLensError
from interp.result_io import DataclassResult

from circuits.causal.controls import KINDS, LABELS, Control, run_control
from circuits.causal.edits import random_indices, scale_units
from circuits.data.culturebench.constants import LANGUAGE_TO_CULTURE
from circuits.evaluate import SETTINGS_FIELDS, ScoreSettings, score, site_change, summarise
from circuits.pairs import as_pairs, by_concept
from circuits.plots import plot_lines
from circuits.results import Rate, jsonable
from circuits.locate.units import CultureUnits, as_culture_units

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def target_culture(culture: str | None = None, language: str | None = None) -> str:
    """Decision 8: the culture is given, or read from the prompt's language by the fixed map."""
    if culture is not None:
        return culture
    if language is None:
        raise CultureLensError("amplify: give the target culture or the prompt's language")
    key = language.lower()
    if key not in LANGUAGE_TO_CULTURE:
        raise CultureLensError(f"amplify: language {language!r} has no culture in the map; valid: {sorted(LANGUAGE_TO_CULTURE)}")
    return LANGUAGE_TO_CULTURE[key]


def amplify(
    units: CultureUnits | dict[str, Any],
    lam: float = 6.0,
    culture: str | None = None,
    language: str | None = None,
    keep_error: bool = True,
    random_seed: int | None = None,
    model: Any = None,
    match: str | None = None,
    reference: Any = None,
) -> Any:
    """The zero-training amplifier for one target culture: that culture's units x (1 + lam).
    `random_seed` swaps in random units (same count and site; `match`/`reference` as in
    `random_indices`) for the control."""
    units = as_culture_units(units)
    c = target_culture(culture, language)
    if c not in units.cultures:
        raise CultureLensError(f"amplify: no units for culture {c!r}; have {sorted(units.cultures)}")
    idx = units.cultures[c].indices
    if not idx:
        raise CultureLensError(f"amplify: culture {c!r} has no units (all dropped by the noun filter?)")
    if random_seed is not None:
        idx = random_indices(units.basis, model, idx, random_seed, match, reference)
    return scale_units(units.basis, idx, lam, keep_error, label=f"{c}:amplify")


@dataclass
class LambdaSweep(DataclassResult):
    """Per lambda: CultureVQA, noun accuracy and SSIM against the unsteered image (same prompt and
    seed) for the detected units, and each random control (`controls[kind][i]`: the draws at
    `lams[i]`). `best_lam` is chosen by `choose_lambda` on `selection` (the probe nouns when
    given) and only reported on these (test) prompts. `save(folder)` writes lambda_sweep.json
    (`to_json`) and lambda_sweep.safetensors."""

    result_name: ClassVar[str] = "lambda_sweep"

    lams: list[float]
    detected: list[Rate]
    random_mean: list[float]           # the paper's uniform control, kept for older readers
    random_sd: list[float]
    random_draws: list[list[float]]
    noun_detected: list[Rate | None]
    noun_random_mean: list[float | None]
    best_lam: float
    n_prompts: int
    prompt: str
    ssim_detected: list[Rate] = field(default_factory=list)
    controls: dict[str, list[Control]] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)
    paired_p: dict[str, float | None] = field(default_factory=dict)   # at best_lam: detected vs pooled draws

    def to_json(self) -> dict[str, Any]:
        return jsonable(self.__dict__)

    def table(self) -> str:
        """Deprecated: `to_markdown()`."""
        warnings.warn("LambdaSweep.table() is deprecated; use to_markdown()", DeprecationWarning, stacklevel=2)
        return self.to_markdown()

    def to_markdown(self, heading: str | None = None) -> str:
        """Markdown: one row per λ; fidelity beside the gain; controls with their site change;
        `heading` (a Markdown heading line) first when given."""
        kinds = list(self.controls)
        head = "| λ | CultureVQA % (detected) | noun acc % | SSIM vs unsteered | " + " | ".join(
            f"{LABELS.get(k, k)} CultureVQA % (mean ± sd)" for k in kinds) + " |"
        rows = [head, "|" + "---|" * (4 + len(kinds))]
        for i, lam in enumerate(self.lams):
            noun = self.noun_detected[i].pct() if self.noun_detected[i] is not None else "–"
            sim = f"{self.ssim_detected[i].mean:.3f} [{self.ssim_detected[i].low:.3f}, {self.ssim_detected[i].high:.3f}]" \
                if self.ssim_detected else "–"
            ctl = [f"{100 * c[i].mean:.1f} ± {100 * c[i].sd:.1f}" for c in (self.controls[k] for k in kinds)]
            rows.append(f"| {lam:g}{' (chosen)' if lam == self.best_lam else ''} | {self.detected[i].pct()} | {noun} | "
                        f"{sim} | " + " | ".join(ctl) + " |")
        j = self.lams.index(self.best_lam)
        ratio = "; ".join(f"{LABELS.get(k, k)}: {self.controls[k][j].ratio_text()}" for k in kinds)
        sel = self.selection
        lines = rows + ["",
                        f"Chosen λ = **{self.best_lam:g}**, {sel.get('rule', '')} Chosen on {sel.get('on', '?')}; "
                        f"the table is measured on other prompts ({self.n_prompts} {self.prompt}-only prompts)."]
        if sel.get("margin"):
            lines.append(margin_text(sel["margin"]))
        if kinds:
            lines.append(f"Site change of the control draws relative to the detected units (at λ = {self.best_lam:g}, "
                         f"median [min, max] over draws): {ratio}.")
            ps = ", ".join(f"{LABELS.get(k, k)} p = {p:.3g}" for k, p in self.paired_p.items() if p is not None)
            if ps:
                lines.append(f"Paired per-prompt test at λ = {self.best_lam:g}, detected vs the pooled draws "
                             f"(Wilcoxon signed-rank over prompts): {ps}.")
        return "\n".join(([] if heading is None else [heading, ""]) + lines)

    def plot(self, path: str | Path | None = None) -> Figure:
        """CultureVQA (and noun accuracy, SSIM) of the detected units by λ, each control as mean ± sd."""
        series = {"detected units": tuple([getattr(r, k) for r in self.detected] for k in ("mean", "low", "high"))}
        for kind, cs in self.controls.items():
            m = torch.tensor([c.mean for c in cs])
            sd = torch.tensor([c.sd for c in cs])
            series[f"{LABELS.get(kind, kind)} (mean ± sd)"] = (m.tolist(), (m - sd).tolist(), (m + sd).tolist())
        if self.noun_detected and self.noun_detected[0] is not None:
            series["noun accuracy (detected)"] = tuple(
                [getattr(r, k) for r in self.noun_detected] for k in ("mean", "low", "high"))
        if self.ssim_detected:
            series["SSIM vs unsteered (detected)"] = tuple(
                [getattr(r, k) for r in self.ssim_detected] for k in ("mean", "low", "high"))
        return plot_lines(self.lams, series, path, "λ", "share / SSIM", "amplifier λ sweep", mark=self.best_lam)


def choose_lambda(lams: Sequence[float], culture: Sequence[float], noun: Sequence[float | None] | None,
                  max_noun_drop: float = 0.05) -> tuple[float, str]:
    """The λ with the highest CultureVQA among those whose noun accuracy is at least the
    unsteered one (λ = 0, which must be in `lams` when noun accuracy is given) minus
    `max_noun_drop`; ties go to the smaller λ. Without noun accuracy: the highest CultureVQA,
    and the rule says so. Returns (λ, the rule in words)."""
    lams = [float(l) for l in lams]
    if len(culture) != len(lams):
        raise CultureLensError(f"choose_lambda: {len(lams)} λ values but {len(culture)} CultureVQA values")
    ok = list(range(len(lams)))
    if noun is not None and all(n is not None for n in noun):
        if 0.0 not in lams:
            raise CultureLensError(f"choose_lambda: the noun constraint is relative to λ = 0, absent from {lams}")
        floor = noun[lams.index(0.0)] - max_noun_drop
        ok = [i for i in ok if noun[i] >= floor - 1e-12]
        rule = (f"the highest CultureVQA with noun accuracy ≥ unsteered − {100 * max_noun_drop:g} points "
                f"(≥ {100 * floor:.1f} %).")
    else:
        rule = "the highest CultureVQA (no noun judge: no fidelity constraint)."
    best = max(ok, key=lambda i: (culture[i], -lams[i]))
    return lams[best], rule


def _wilson_half_width(hits: int, n: int, z: float = 1.96) -> float:
    """Half the width of the 95 % Wilson interval of hits/n, in images (0 < it even at 0 or n)."""
    if n <= 0:
        return float("nan")
    p = hits / n
    return n * z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)


def selection_margin(lams: Sequence[float], culture: Sequence[float], noun: Sequence[float | None] | None,
                     n_images: int, max_noun_drop: float = 0.05) -> dict[str, Any]:
    """How firmly `choose_lambda` decided: the fewest image judgements whose change would choose
    another λ (`images_to_flip`, and which change: `deciding`), against the rule's own
    uncertainty there (`uncertainty_images`: half the 95 % Wilson interval, in images, of the
    rate that decides). `fragile` when the decision turns on fewer images than that.

    Changes counted: the chosen λ's noun accuracy falling below the floor; a λ with higher
    CultureVQA but excluded by the noun floor rising to it (or the floor, set by λ = 0, falling to
    it: the same count); CultureVQA of a permitted λ overtaking the chosen one (ties go to the
    smaller λ). Rates are turned back into counts of the `n_images` selection images."""
    lams = [float(l) for l in lams]
    best, rule = choose_lambda(lams, culture, noun, max_noun_drop)
    b = lams.index(best)
    C = [round(c * n_images) for c in culture]
    has_noun = noun is not None and all(x is not None for x in noun)
    N = [round(x * n_images) for x in noun] if has_noun else None
    per = []
    options: list[tuple[int, float, str]] = []   # (images, uncertainty in images, what)
    thresh = None
    if has_noun:
        floor = noun[lams.index(0.0)] - max_noun_drop
        thresh = math.ceil(n_images * floor - 1e-9)   # fewest noun hits that pass the floor
    for i, lam in enumerate(lams):
        ok = thresh is None or N[i] >= thresh
        per.append({"lam": lam, "culture_hits": C[i], "noun_hits": None if N is None else N[i], "permitted": ok,
                    "noun_hits_above_floor": None if N is None else N[i] - thresh,
                    "noun_ci_half_images": None if N is None else _wilson_half_width(N[i], n_images)})
        if i == b:
            continue
        beats = (C[i], -lam) > (C[b], -best)
        if beats and not ok:   # excluded only by the noun floor
            options.append((thresh - N[i], _wilson_half_width(N[i], n_images),
                            f"λ = {lam:g} ({C[i]} vs {C[b]} culture hits) is {thresh - N[i]} noun image(s) short "
                            f"of the floor"))
        elif ok and not beats:  # permitted, lower CultureVQA: overtakes after this many culture flips
            need = C[b] - C[i] + (0 if lam < best else 1)
            u = math.hypot(_wilson_half_width(C[i], n_images), _wilson_half_width(C[b], n_images))
            options.append((need, u, f"λ = {lam:g} trails by {C[b] - C[i]} culture hit(s)"))
    if thresh is not None and best != 0.0:
        need = N[b] - thresh + 1
        options.append((need, _wilson_half_width(N[b], n_images),
                        f"the chosen λ = {best:g} is {need} noun image(s) above failing the floor"))
    if not options:
        return {"chosen": best, "rule": rule, "n_images": n_images, "per_lam": per, "images_to_flip": None,
                "deciding": "no other λ", "uncertainty_images": None, "fragile": False}
    images, unc, what = min(options, key=lambda o: (o[0], -o[1]))
    return {"chosen": best, "rule": rule, "n_images": n_images, "per_lam": per, "images_to_flip": int(images),
            "deciding": what, "uncertainty_images": float(unc), "fragile": bool(images <= unc)}


def margin_text(margin: dict[str, Any]) -> str:
    """One sentence on how firmly λ was chosen (from `selection_margin`), flagged when fragile."""
    if margin.get("images_to_flip") is None:
        return "No other λ could be chosen."
    flag = ("**Fragile choice**: it turns on fewer images than the rule's own uncertainty there"
            if margin["fragile"] else "A clear choice: more images than the rule's own uncertainty there")
    return (f"Margin of the choice: {margin['images_to_flip']} of {margin['n_images']} selection image(s) "
            f"would change it ({margin['deciding']}); the 95 % Wilson half-width there is "
            f"{margin['uncertainty_images']:.1f} images. {flag}.")


@renamed(steps="num_steps")
@moved(ScoreSettings, *SETTINGS_FIELDS, param="settings", where="circuits.lambda_sweep")
@switch
def lambda_sweep(
    model,
    units: CultureUnits | dict[str, Any],
    pairs: Sequence[Any],
    judge: Callable,
    lams: Sequence[float] = (0, 2, 4, 6, 7, 8),
    n_random: int = 3,
    prompt: str = "noun",
    noun_judge: Callable | None = None,
    keep_error: bool = True,
    *,
    settings: ScoreSettings | None = None,
    n_matched: int = 0,
    reference: Any = None,
    select_on: Sequence[Any] | None = None,
    max_noun_drop: float = 0.05,
    progress: bool = True,
) -> LambdaSweep:
    """Amplify each prompt's culture units (culture from the pair's label) at every lambda and
    judge CultureVQA, noun accuracy and SSIM against the unsteered image; the same with
    `n_random` uniform and `n_matched` activity-matched random unit sets (`reference`: unit
    activations on the probe prompts, see `circuits.causal.validate.reference_activity`).

    λ is chosen by `choose_lambda` on `select_on` (e.g. the probe nouns' pairs: a detected-units
    sweep there) under the noun constraint `max_noun_drop`; without `select_on` it is chosen on
    `pairs` themselves and the result says so. `settings` (`circuits.ScoreSettings`; None: its
    defaults): image noise, denoising steps, batch size, bootstrap resamples; random draw r uses
    seed `settings.seed + 1 + r`."""
    st = ScoreSettings() if settings is None else settings
    seed, batch_size, n_boot = st.seed, st.batch_size, st.n_boot
    units = as_culture_units(units)
    groups = by_concept(as_pairs(pairs))
    missing = [c for c in groups if c not in units.cultures]
    if missing:
        raise CultureLensError(f"lambda_sweep: no units for cultures {missing}")
    if n_matched and reference is None:
        raise CultureLensError("lambda_sweep: n_matched > 0 needs reference= unit activations (reference_activity)")
    kinds = {k: n for k, n in (("uniform", n_random), ("activity", n_matched)) if n > 0}
    gen = dict(prompt=prompt, noun_judge=noun_judge, settings=st, keep_images=True)
    def amp(lam, **kw):
        """The per-culture interventions that amplify the units (or a random draw, `kw`) by `lam`."""
        def per_culture(c):
            return [amplify(units, lam, culture=c, keep_error=keep_error, model=model, **kw)]
        return per_culture

    def draw_kw(kind, r):
        return dict(random_seed=seed + 1 + r, match=KINDS[kind], reference=reference)

    # The unsteered images: λ = 0 with the error kept is exactly the identity, so reuse it.
    base = None
    if not (0 in list(lams) and keep_error):
        base = score(model, groups, judge, None, desc="unsteered", **gen)
    det, ssim, ndet, controls = [], [], [], {k: [] for k in kinds}
    for lam in bar(list(lams), desc="λ sweep"):
        s = score(model, groups, judge, amp(lam), desc=f"λ={lam}", **gen)
        if base is None:
            base = s
        m = summarise(s, base, n_boot, seed)
        det.append(m["culture"])
        ndet.append(m["noun"])
        ssim.append(m["ssim"])
        change = site_change(model, groups, amp(lam), prompt, batch_size) if lam != 0 else None
        for kind, n in kinds.items():
            if lam == 0 and keep_error:
                # λ = 0 leaves any unit set unchanged: every draw is the unsteered image.
                controls[kind].append(Control(kind, [s.correct.double().mean().item()] * n, [], [1.0] * n,
                                              [s.noun_correct.double().mean().item()] * n if s.noun_correct is not None else []))
                continue
            controls[kind].append(run_control(
                kind, n,
                lambda r: score(model, groups, judge, amp(lam, **draw_kw(kind, r)), desc=f"λ={lam} {kind} {r}", **gen),
                lambda r: site_change(model, groups, amp(lam, **draw_kw(kind, r)), prompt, batch_size),
                s, change, lower_is_extreme=False))
    if select_on is not None:
        sel_groups = by_concept(as_pairs(select_on))
        sel = [score(model, sel_groups, judge, amp(lam), desc=f"select λ={lam}", **{**gen, "keep_images": False})
               for lam in bar(list(lams), desc="λ selection")]
        sc = [x.correct.double().mean().item() for x in sel]
        sn = [x.noun_correct.double().mean().item() for x in sel] if noun_judge is not None else None
        best, rule = choose_lambda(lams, sc, sn, max_noun_drop)
        n_sel = int(sel[0].correct.numel())
        selection = {"on": f"the selection prompts ({sum(len(v) for v in sel_groups.values())}, not the table's)",
                     "rule": rule, "lams": [float(l) for l in lams], "culture": sc, "noun": sn, "chosen": best,
                     "margin": selection_margin(lams, sc, sn, n_sel, max_noun_drop)}
    else:
        sc, sn = [r.mean for r in det], ([r.mean for r in ndet] if noun_judge is not None else None)
        best, rule = choose_lambda(lams, sc, sn, max_noun_drop)
        selection = {"on": "the evaluation prompts themselves (no selection set given)", "rule": rule, "chosen": best,
                     "margin": selection_margin(lams, sc, sn, int(base.correct.numel()), max_noun_drop)}
    j = list(lams).index(best)
    paired = {k: cs[j].p_paired for k, cs in controls.items()}
    uni = controls.get("uniform", [])
    rm = [c.mean for c in uni] or [float("nan")] * len(lams)
    rsd = [c.sd for c in uni] or [0.0] * len(lams)
    rdraws = [c.draws for c in uni] or [[] for _ in lams]
    nrand = [(sum(c.noun) / len(c.noun)) if c.noun else None for c in uni] or [None] * len(lams)
    n = sum(len(v) for v in groups.values())
    return LambdaSweep([float(l) for l in lams], det, rm, rsd, rdraws, ndet, nrand, float(best), n, prompt,
                       ssim, controls, selection, paired)

"""The whole circuits analysis as one composable run: scan -> units -> validation ->
amplifier sweep -> enhancer (+ random-layer control) -> causal sweep, each step writing
JSON, figures and a Markdown section into a results folder. A report calls the steps
it needs; `run_all` chains them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from circuits.locate.units import ELBOW_RULE, k_sources  # noqa: F401 (re-exported: reports call runner.k_sources)
from circuits.evaluate import SETTINGS_FIELDS, ScoreSettings
from circuits.results import atomic_write_bytes, write_json
from interp.checks import moved, renamed

if TYPE_CHECKING:
    from circuits.causal.enhancer import EnhancerConfig
    from circuits.causal.sweep import CausalSweep
    from circuits.causal.validate import Validation
    from circuits.locate.scan import LayerScan
    from circuits.locate.units import CultureUnits


def _pct(r) -> str:
    return f"{100 * r.mean:.1f}% [{100 * r.low:.1f}, {100 * r.high:.1f}]"


def scan_markdown(scan: LayerScan, heading: str = "## Culture-layer scan (ΔCA)") -> str:
    """The scan's section: `LayerScan.to_markdown` under `heading`, then its figure."""
    return scan.to_markdown(heading) + "\n\n![ΔCA by layer](layer_scan.png)\n"


def units_markdown(units: CultureUnits, heading: str = "## Culture units (WFS)") -> str:
    """The units' section: `CultureUnits.to_markdown` under `heading`, then its figures."""
    return units.to_markdown(heading) + "\n\n![WFS curves](wfs_curves.png) ![overlap](unit_overlap.png)\n"


def validation_markdown(v: Validation, heading: str = "## Masking culture units vs random units") -> str:
    """The validation's section: `Validation.to_markdown` under `heading`, then its figure."""
    return v.to_markdown(heading) + "\n\n![validation](validation.png)\n"


def sweep_markdown(sw) -> str:
    lines = ["## Amplifier λ sweep", "", "| λ | CultureVQA (detected units) | random units (mean ± sd) |", "|---|---|---|"]
    for lam, d, m, s in zip(sw.lams, sw.detected, sw.random_mean, sw.random_sd):
        lines.append(f"| {lam:g} | {_pct(d)} | {100 * m:.1f} ± {100 * s:.1f} |")
    return "\n".join(lines + ["", f"Best λ: {sw.best_lam:g}.", "", "![λ sweep](lambda_sweep.png)", ""])


def enhancer_markdown(rows: dict[str, Any]) -> str:
    lines = ["## Layer enhancer", "", "| enhancer | layer | CultureVQA (noun-only prompts) |", "|---|---|---|"]
    for name, (layer, rate) in rows.items():
        lines.append(f"| {name} | {layer} | {_pct(rate)} |")
    return "\n".join(lines + [""])


def causal_markdown(cs: CausalSweep, heading: str = "## Exhaustive causal sweep") -> str:
    """The causal sweep's section: `CausalSweep.to_markdown` under `heading`, then its figure."""
    return cs.to_markdown(heading) + "\n\n![causal sweep](causal_sweep.png)\n"


def write_summary(out: Path, title: str, sections: Sequence[str]) -> None:
    atomic_write_bytes(out / "summary.md", ("# " + title + "\n\n" + "\n".join(sections)).encode())


@renamed(steps="num_steps")
@moved(ScoreSettings, *SETTINGS_FIELDS, param="settings", where="circuits.runner.evaluate_enhancer")
def evaluate_enhancer(model, enhancer, pairs, judge, *, settings: ScoreSettings | None = None):
    """CultureVQA of noun-only prompts with the enhancer installed (None: baseline), generated and
    judged by `settings` (`circuits.ScoreSettings`; None: its defaults)."""
    from circuits.results import Rate
    from circuits.evaluate import score
    from circuits.pairs import as_pairs, by_concept

    st = ScoreSettings() if settings is None else settings
    s = score(model, by_concept(as_pairs(pairs)), judge, (lambda c: [enhancer]) if enhancer is not None else None,
              "noun", None, settings=st, desc="enhancer")
    return Rate.of(s.correct, st.n_boot, st.seed)


@dataclass
class RunConfig:
    """Knobs of `run_all`; defaults follow PAPER.md, `quick()` shrinks them for tests."""

    direction: str | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    n_boot: int = 1000
    sae_path: str | None = None          # SAE latents at the chosen layer; None: MLP neurons there
    rho: float = 0.5
    k_max: int = 64
    n_random: int = 10
    lams: tuple[float, ...] = (0, 2, 4, 6, 7, 8)
    lam_random: int = 3
    enhancer_steps: int = 2000           # training steps of each enhancer (EnhancerConfig.train_steps)
    enhancer_lr: float = 5e-5
    sweep_units: int = 8
    num_steps: int | None = None         # denoising steps per image (None: the model's default)
    batch_size: int = 8
    seed: int = 0
    skip: tuple[str, ...] = ()
    probe_split: str = "probe"           # scan + units (+ the causal sweep's units)
    eval_split: str = "test"             # every CultureVQA table
    train_split: str = "train"           # the enhancer
    allow_overlap: bool = False          # probe and evaluation sets sharing prompts: refused unless True
    sweep_saes: tuple[str, ...] = ()     # "LAYER=PATH" per layer: the causal sweep's SAEs (default: MLP neurons)

    def score_settings(self) -> ScoreSettings:
        """The generation and judging settings of every judged step (seed, num_steps,
        batch_size, n_boot)."""
        return ScoreSettings(seed=self.seed, num_steps=self.num_steps, batch_size=self.batch_size, n_boot=self.n_boot)

    def enhancer_config(self) -> "EnhancerConfig":
        """The training settings of each enhancer (`enhancer_steps`, `enhancer_lr`, `seed`)."""
        from circuits.causal.enhancer import EnhancerConfig

        return EnhancerConfig(train_steps=self.enhancer_steps, lr=self.enhancer_lr, seed=self.seed)

    @classmethod
    def quick(cls, **kw: Any) -> "RunConfig":
        base = dict(seeds=(0,), n_boot=200, n_random=2, lams=(0, 6), lam_random=1, enhancer_steps=4,
                    enhancer_lr=1e-3, sweep_units=4)
        base.update(kw)
        return cls(**base)


@dataclass
class RunResults:
    scan: Any = None
    units: Any = None
    validation: Any = None
    lambda_sweep: Any = None
    enhancer: dict[str, Any] = field(default_factory=dict)
    causal: Any = None


def splits_markdown(counts: dict[str, int], used: dict[str, tuple[str, int]], overlap: int, allowed: bool) -> str:
    """The data each step saw, and whether selection and evaluation share prompts."""
    lines = ["## Splits", "", "| role | split | records |", "|---|---|---|"]
    lines += [f"| {role} | {s} | {n} |" for role, (s, n) in used.items()]
    lines += ["", "All records by split: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".", ""]
    if overlap:
        lines.append(f"**Probe and evaluation sets share {overlap} prompt texts** (allowed explicitly: "
                     f"allow_overlap={allowed}); units were selected partly on the data they are judged on.")
    else:
        lines.append("Probe and evaluation sets share no prompt text.")
    return "\n".join(lines + [""])


def run_all(model, records: Sequence[Any], judge: Callable, out: str | Path, cfg: RunConfig | None = None) -> RunResults:
    """Every step on `records`: the probe split (scan + units), the evaluation split (every
    table) and the train split (enhancer), by `cfg.*_split`. A missing or empty split is an
    error naming it and the counts; probe and evaluation sets that share a prompt are refused
    unless `cfg.allow_overlap` (then the summary says so). Writes `out/` and returns the results."""
    from circuits import sae_or_neurons
    from circuits.causal.amplify import lambda_sweep
    from circuits.causal.enhancer import random_other_layer, train_enhancer
    from circuits.locate.scan import culture_layer_scan
    from circuits.causal.sweep import causal_sweep
    from circuits.locate.units import culture_units
    from circuits.causal.validate import validate_units

    cfg = cfg or RunConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from circuits.pairs import check_disjoint, split_counts, take_split

    probe = take_split(records, cfg.probe_split, "scan and units")
    test = take_split(records, cfg.eval_split, "evaluation")
    needs_train = "enhancer" not in cfg.skip
    train = take_split(records, cfg.train_split, "enhancer training") if needs_train else []
    overlap = check_disjoint(probe, test, (cfg.probe_split, cfg.eval_split), cfg.allow_overlap)
    used = {"scan, units": (cfg.probe_split, len(probe)), "evaluation": (cfg.eval_split, len(test))}
    if needs_train:
        used["enhancer"] = (cfg.train_split, len(train))
    res = RunResults()
    sections = [splits_markdown(split_counts(records), used, overlap, cfg.allow_overlap)]
    write_json(out / "splits.json", {"counts": split_counts(records), "used": used, "shared_prompts": overlap,
                                     "allow_overlap": cfg.allow_overlap})
    res.scan = culture_layer_scan(model, probe, direction=cfg.direction, seeds=cfg.seeds, n_boot=cfg.n_boot,
                                  batch_size=max(cfg.batch_size, 16))
    res.scan.save(out)
    res.scan.plot(out / "layer_scan.png")
    sections.append(scan_markdown(res.scan))
    layer = res.scan.chosen
    basis = sae_or_neurons(layer, cfg.sae_path)
    res.units = culture_units(model, basis, probe, rho=cfg.rho, k_max=cfg.k_max)
    res.units.save(out / "units")
    res.units.plot_wfs(out / "wfs_curves.png")
    res.units.plot_overlap(out / "unit_overlap.png")
    sections.append(units_markdown(res.units))
    settings = cfg.score_settings()
    if "validate" not in cfg.skip:
        res.validation = validate_units(model, res.units, test, judge, n_random=cfg.n_random, settings=settings)
        res.validation.save(out)
        res.validation.plot(out / "validation.png")
        sections.append(validation_markdown(res.validation))
    if "amplify" not in cfg.skip:
        res.lambda_sweep = lambda_sweep(model, res.units, test, judge, lams=cfg.lams, n_random=cfg.lam_random,
                                        settings=settings)
        res.lambda_sweep.save(out)
        res.lambda_sweep.plot(out / "lambda_sweep.png")
        sections.append(sweep_markdown(res.lambda_sweep))
    if "enhancer" not in cfg.skip and any(getattr(r, "image", None) for r in train):
        rows = {"none (baseline)": (None, evaluate_enhancer(model, None, test, judge, settings=settings))}
        ctrl = random_other_layer(model.encoders["text"].n_layers, layer, cfg.seed)
        for name, l in (("culture layer", layer), ("random other layer", ctrl)):
            run = train_enhancer(model, train, layer=l, out=out / f"enhancer_layer{l}", cfg=cfg.enhancer_config(),
                                 split=None)
            res.enhancer[name] = run
            rows[name] = (l, evaluate_enhancer(model, run.enhancer, test, judge, settings=settings))
        write_json(out / "enhancer.json", {k: {"layer": l, "culturevqa": r} for k, (l, r) in rows.items()})
        sections.append(enhancer_markdown(rows))
    if "causal" not in cfg.skip:
        from circuits.io import load_layer_saes

        saes = load_layer_saes(list(cfg.sweep_saes))
        res.causal = causal_sweep(model, probe, test, judge, n_units=cfg.sweep_units, chosen=layer, rho=cfg.rho,
                                  settings=settings, layers=sorted(saes) if saes else None, basis_for=saes,
                                  allow_overlap=cfg.allow_overlap)
        res.causal.save(out)
        res.causal.plot(out / "causal_sweep.png")
        sections.append(causal_markdown(res.causal))
    write_summary(out, "Culture circuits", sections)
    return res

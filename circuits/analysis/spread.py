"""How much the main job's SAE-dependent numbers move with the SAE's seed (and so with the CPU).

Why: every number downstream of an SAE (its FVU, the units, masking, specificity, the λ chosen,
the amplifier, Appendix B, the causal sweep) depends on float-level details of SAE training, so
another CPU's kernels, like another seed, give other numbers. Within one machine every run is
bit-identical; across machines only a spread is honest. `sae_spread` reruns the SAE-dependent
steps of `analyze` (`AnalysisConfig.sae_dependent_only`) for other SAE seeds, next to the main
job's own results (SAE seed = `cfg.seed`), and writes the mean and range of each row, and the λ
chosen per seed. `check_within` then tells whether a run (another machine, other kernels) falls
inside that spread and whether its SAE-independent numbers are identical.

Rows (`ROWS`): `(key, label, getter)`, a getter reads one number from a `results.json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

from circuits.analysis.cultureworld import AnalysisConfig, analyze
from circuits.analysis.report import atomic_write_text
from circuits.plots import pyplot
from interp.errors import CultureLensError
from interp.result_io import read_json, require_keys, result_folder

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NAME = "spread"   # the result's files: spread.json (+ spread.md, the report's table)

Getter = Callable[[dict], float | None]


def _get(*path: Any) -> Getter:
    def read(r: dict) -> float | None:
        x: Any = r
        for p in path:
            if x is None:
                return None
            x = x[p] if isinstance(p, int) else x.get(p)
        return None if x is None else float(x)
    return read


def _at_best(field: str, sub: str = "mean") -> Getter:
    """A λ-sweep list read at the chosen λ."""
    def read(r: dict) -> float | None:
        lam = r.get("lambda_sweep")
        if not lam:
            return None
        row = lam[field][lam["lams"].index(lam["best_lam"])]
        return None if row is None else float(row[sub] if isinstance(row, dict) else row)
    return read


def _sweep_drop(layer_of: Callable[[dict], int]) -> Getter:
    def read(r: dict) -> float | None:
        sw = r.get("causal_sweep")
        return None if not sw else float(sw["drops"][sw["layers"].index(layer_of(sw))])
    return read


# (key, label, getter, scale): SAE-dependent rows of the main job.
ROWS: tuple[tuple[str, str, Getter, float], ...] = (
    ("sae_fvu", "SAE held-out FVU", _get("sae", "quality", "fvu"), 1.0),
    ("sae_dead", "SAE latents dead on the training tokens %", _get("sae", "quality_train", "dead_fraction"), 100.0),
    ("mask_topk", "masked Top-K culture units, CultureVQA %", _get("validation_sae", "masked", "mean"), 100.0),
    ("mask_uniform", "uniform random control, CultureVQA %", _get("validation_sae", "random_mean"), 100.0),
    ("mask_matched", "activity-matched control, CultureVQA %",
     _get("validation_sae", "controls", "activity", "mean"), 100.0),
    ("specificity", "specificity index (mask)", _get("specificity_mask", "index"), 1.0),
    ("attn_masked", "paper-literal basis (hook_attn_out) masked, CultureVQA %",
     _get("attn_basis", "validation", "masked", "mean"), 100.0),
    ("sweep_chosen_rank", "causal rank of the ΔCA layer in the same-basis sweep", _get("causal_sweep", "chosen_rank"), 1.0),
    ("sweep_chosen_drop", "same-basis sweep: drop at the ΔCA layer, points",
     _sweep_drop(lambda sw: sw["chosen"]), 100.0),
    ("sweep_top_drop", "same-basis sweep: largest drop of any layer, points",
     lambda r: None if not r.get("causal_sweep") else 100.0 * max(r["causal_sweep"]["drops"]), 1.0),
    ("lambda", "λ chosen on the probe nouns", _get("lambda_sweep", "best_lam"), 1.0),
    ("lambda_images_to_flip", "images that would change the chosen λ",
     _get("lambda_sweep", "selection", "margin", "images_to_flip"), 1.0),
    ("amp_culture", "amplifier at the chosen λ, test nouns, CultureVQA %", _at_best("detected"), 100.0),
    ("amp_noun", "amplifier at the chosen λ, noun accuracy %", _at_best("noun_detected"), 100.0),
    ("amp_ssim", "amplifier at the chosen λ, SSIM vs unsteered", _at_best("ssim_detected"), 1.0),
    ("amp_specificity", "amplifier specificity index", _get("specificity_amplify", "index"), 1.0),
    ("appendix_b", "Appendix B: intended culture %", _get("appendix_b", "hit_ci", 0), 1.0),
)

# Rows no SAE enters: identical across SAE seeds, and across CPUs where the kernels agree.
INDEPENDENT: tuple[tuple[str, str, Getter, float], ...] = (
    ("gap", "cultural gap, points", _get("organism", "gap_points"), 1.0),
    ("layer", "ΔCA layer", _get("layer_scan", "encoders", "text", "chosen"), 1.0),
    ("mask_baseline", "masking baseline, CultureVQA %", _get("validation_sae", "baseline", "mean"), 100.0),
)


class RowSpread(NamedTuple):
    key: str
    label: str
    values: list[float | None]   # one per SAE seed, in `Spread.seeds` order
    mean: float | None
    low: float | None
    high: float | None


@dataclass
class Spread:
    """SAE-dependent rows over SAE seeds: values per seed, mean and range."""

    seeds: list[int]
    rows: list[RowSpread]
    independent: dict[str, list[float | None]]   # SAE-independent rows per seed (should be constant)
    config: dict[str, Any]

    @classmethod
    def from_results(cls, seeds: Sequence[int], results: Sequence[dict], config: dict[str, Any]) -> "Spread":
        """The spread of `ROWS` over `results` (one `results.json` dict per seed)."""
        rows = []
        for key, label, get, scale in ROWS:
            vals = [None if (v := get(r)) is None else scale * v for r in results]
            got = [v for v in vals if v is not None and not math.isnan(v)]
            rows.append(RowSpread(key, label, vals, sum(got) / len(got) if got else None,
                                  min(got) if got else None, max(got) if got else None))
        indep = {key: [None if (v := get(r)) is None else scale * v for r in results]
                 for key, _, get, scale in INDEPENDENT}
        return cls(list(seeds), rows, indep, config)

    def row(self, key: str) -> RowSpread:
        for r in self.rows:
            if r.key == key:
                return r
        raise KeyError(f"spread: no row {key!r}; rows: {[r.key for r in self.rows]}")

    def to_json(self) -> dict[str, Any]:
        return {"seeds": self.seeds, "rows": [r._asdict() for r in self.rows], "independent": self.independent,
                "config": self.config}

    def save(self, folder: str | Path) -> Path:
        """`folder/spread.json` + `folder/spread.md`; returns the folder. (No safetensors file:
        a spread holds no tensors. The JSON keeps NaN as NaN, which Python's json reads back.)"""
        folder = result_folder(folder, NAME)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / f"{NAME}.json", json.dumps(self.to_json(), indent=2, ensure_ascii=False))
        atomic_write_text(folder / f"{NAME}.md", self.to_markdown())
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Spread":
        """Read back what `save` wrote, equal to it."""
        path = result_folder(folder, NAME) / f"{NAME}.json"
        if not path.is_file():
            raise CultureLensError(f"{path}: missing; this folder is written by Spread.save (culturelens spread)")
        d = read_json(path)
        require_keys(d, ("seeds", "rows", "independent", "config"), str(path), cls.__name__)
        try:
            rows = [RowSpread(**r) for r in d["rows"]]
        except TypeError as e:
            raise CultureLensError(f"{path}: a row is not a RowSpread record ({e})") from None
        return cls(d["seeds"], rows, d["independent"], d["config"])

    def to_markdown(self, heading: str | None = "## SAE-dependent rows over SAE seeds") -> str:
        """The rows' values per SAE seed, mean and range, and whether the SAE-independent rows
        agree, under `heading` (None: none)."""
        def fmt(v):
            return "–" if v is None else (f"{v:.4f}" if abs(v) < 1 and v != 0 else f"{v:.1f}")
        lines = ([] if heading is None else [heading, ""]) + ["| row | " + " | ".join(f"SAE seed {s}" for s in self.seeds) + " | mean | range |",
                 "|---|" + "---|" * (len(self.seeds) + 2)]
        for r in self.rows:
            lines.append(f"| {r.label} | " + " | ".join(fmt(v) for v in r.values) +
                         f" | {fmt(r.mean)} | {fmt(r.low)} – {fmt(r.high)} |")
        # A sae_dependent_only rerun skips some of these rows (None): compare the values present.
        same = [k for k, v in self.independent.items() if len({x for x in v if x is not None}) <= 1]
        lines += ["", f"SAE-independent rows identical across the seeds: {', '.join(same) or 'none'}"
                  + (f"; differing: {[k for k in self.independent if k not in same]}" if len(same) < len(self.independent) else "")
                  + "."]
        return "\n".join(lines)

    def plot(self, path: str | Path | None = None) -> Figure:
        """One panel per row: the value of each seed, and the range."""
        plt = pyplot()
        rows = [r for r in self.rows if r.mean is not None]
        if not rows:
            raise CultureLensError("Spread.plot: no row has a value to draw")
        fig, axes = plt.subplots(1, len(rows), figsize=(1.6 * len(rows), 2.6), squeeze=False)
        for ax, r in zip(axes[0], rows):
            ax.plot([0] * len(r.values), [v for v in r.values], "o", alpha=0.7)
            ax.set_title(r.key, fontsize=7)
            ax.set_xticks([])
            ax.tick_params(labelsize=6)
        fig.suptitle(f"SAE-dependent rows over SAE seeds {self.seeds}", fontsize=8)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
        return fig


def sae_spread(out: str | Path, seeds: Sequence[int] = (0, 1, 2), main: str | Path | None = None,
               quick: bool = False, cfg: AnalysisConfig | None = None) -> Spread:
    """Rerun the SAE-dependent steps of the main job for each SAE seed in `seeds` (into
    `out/sae_seed{s}/`) and write their spread into `out/`. `main`: a finished main-job report
    folder (same mode); its SAE seed is `cfg.seed`, so that seed is read from it, not rerun."""
    base = cfg or (AnalysisConfig.quick() if quick else AnalysisConfig())
    out = Path(out)
    results = []
    for s in seeds:
        main_seed = base.seed if base.sae_seed is None else base.sae_seed
        if main is not None and s == main_seed:
            path = Path(main) / "results.json"
            if not path.is_file():
                raise CultureLensError(f"spread: {path} missing: run the main job into {main} first")
            r = json.loads(path.read_text(encoding="utf-8"))
            # Compared as JSON (tuples were written as lists); the SAE seed is what a spread varies.
            ignore = ("sae_seed", "sae_dependent_only")
            if {k: v for k, v in r.get("config", {}).items() if k not in ignore} != \
                    {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(base))).items() if k not in ignore}:
                raise CultureLensError(f"spread: {path} was run with other settings than this spread "
                                       f"({'quick' if quick else 'full'} mode); rerun it or pass the matching mode")
        else:
            run = dataclasses.replace(base, sae_seed=s, sae_dependent_only=True)
            folder = analyze(out / f"sae_seed{s}", quick=quick, cfg=run).parent
            r = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        results.append(r)
    # The SAE-independent rows of a sae_dependent_only run that it skipped come from the main job.
    spread = Spread.from_results(seeds, results, dataclasses.asdict(base))
    spread.save(out)
    spread.plot(out / "spread.png")
    return spread


class Check(NamedTuple):
    key: str
    value: float | None
    low: float | None
    high: float | None
    ok: bool


def check_within(results: dict, spread: Spread, reference: dict | None = None) -> list[Check]:
    """Each SAE-dependent row of `results` against the spread's range; with `reference` (the main
    job's results on the reference machine) each SAE-independent row must equal it exactly."""
    checks = []
    for key, _, get, scale in ROWS:
        row = spread.row(key)
        v = get(results)
        v = None if v is None else scale * v
        ok = v is None or row.low is None or (row.low - 1e-9 <= v <= row.high + 1e-9)
        checks.append(Check(key, v, row.low, row.high, ok))
    if reference is not None:
        for key, _, get, scale in INDEPENDENT:
            a, b = get(results), get(reference)
            checks.append(Check(key, a, b, b, a == b))
    return checks

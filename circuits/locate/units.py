"""Culture-unit detection (PAPER.md Step 2) over either unit basis: SAE latents at a site
(decision 3, default) or native MLP neurons. Output: one `interp.Units` per culture."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Float
from safetensors.torch import load_file
from torch import Tensor

import interp
from interp.progress import bar, switch
from interp.errors import CultureLensError
from interp.model.sites import text_block

from circuits.pairs import PromptPair, as_pairs, by_concept
from circuits.plots import plot_overlap, plot_units, plot_wfs_curves
from circuits.results import jsonable, save_safetensors, write_json
from circuits.locate.tokens import content_mask
from circuits.locate.wfs import MIN_DROP, select_units, specificity, wfs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The elbow rule (circuits.locate.wfs.elbow_k) as `CultureUnits.to_markdown` states it.
ELBOW_RULE = ("K is the elbow of the positive part of each culture's sorted {score} curve (units scoring exactly 0 "
              "are left out): the sharpest drop between consecutive ranks (largest ratio s[i-1]/s[i] among the "
              "first 2·k_max+1 positive scores), K = the units before it, if the score at least {drop:g}-folds "
              "there; bounds [k_min, k_max] = [{k_min}, {k_max}]. *K from*: elbow (the drop decided), cap (the "
              "drop lies past k_max), flat (no drop that sharp: the curve decays smoothly, K = k_max), floor, "
              "given, none (no unit scored above 0).")
POOLS = ("max", "mean", "tokens")
SELECT = ("wfs", "specific")     # rank by WFS_cult, or by WFS_cult minus the max over other cultures


@dataclass
class UnitBasis:
    """Where units live: the activation at `site`, optionally encoded by an SAE into latents."""

    site: str
    sae: Any = None                  # a sae.TopKSAE (encode: [..., d_in] -> [..., d_sae]) or None

    @property
    def kind(self) -> str:
        return "sae" if self.sae is not None else "neuron"

    @property
    def encoder(self) -> str:
        return text_block(self.site).encoder

    @property
    def layer(self) -> int:
        return text_block(self.site).layer

    def encode(self, acts: Float[Tensor, "B S d"]) -> Float[Tensor, "B S M"]:
        if self.sae is None:
            return acts
        with torch.no_grad():
            return self.sae.encode(acts.to(next(self.sae.parameters()).dtype))

    def to_json(self) -> dict[str, Any]:
        return {"site": self.site, "kind": self.kind}


def neuron_basis(layer: int, encoder: str = "text") -> UnitBasis:
    """Native MLP neurons (post-activation) of one encoder layer."""
    return UnitBasis(f"{encoder}.blocks.{layer}.mlp.hook_post")


def sae_basis(sae: Any, site: str | None = None) -> UnitBasis:
    """SAE latents of `site` (default: the SAE's own hook name, else an error)."""
    meta = (getattr(sae, "saelens_cfg", None) or {}).get("metadata", {}) or {}
    site = site or meta.get("hook_name") or getattr(sae, "hook_name", None)
    if site is None:
        raise CultureLensError("sae_basis: the SAE carries no hook name; pass site='text.blocks.{l}.hook_resid_post'")
    return UnitBasis(site, sae)


def as_basis(basis: Any, site: str | None = None) -> UnitBasis:
    if isinstance(basis, UnitBasis):
        return basis
    if isinstance(basis, str):
        return UnitBasis(basis)
    if isinstance(basis, int):
        return neuron_basis(basis)
    if hasattr(basis, "encode"):
        return sae_basis(basis, site)
    raise CultureLensError(f"unit basis must be a UnitBasis, a site name, a layer or an SAE; got {type(basis).__name__}")


def unit_rows(
    model, basis: UnitBasis, prompts: Sequence[str], pool: str = "max", batch_size: int = 16, desc: str = "units",
    interventions: Sequence[Any] = (),
) -> Float[Tensor, "N M"]:
    """Unit activations per prompt (pooled over content tokens) or per content token, with
    `interventions` active (passed to `interp.capture`, so a write at the read site is seen)."""
    from circuits.locate.acts import encoder_acts

    if pool not in POOLS:
        raise CultureLensError(f"pool must be one of {POOLS}; got {pool!r}")
    rows = []
    for s in bar(range(0, len(prompts), batch_size), desc=desc, leave=False):
        batch = list(prompts[s : s + batch_size])
        acts = encoder_acts(model, batch, [basis.site], basis.encoder, interventions)[basis.site]
        z = basis.encode(acts).to(torch.float64)
        mask, _ = content_mask(model, batch, basis.encoder)
        mask = mask[:, : z.shape[1]]
        for b in range(z.shape[0]):
            if not mask[b].any():
                raise CultureLensError(f"prompt {s + b} ({batch[b]!r}) has no content tokens")
            zt = z[b][mask[b]]
            if pool == "max":
                rows.append(zt.max(0).values[None])
            elif pool == "mean":
                rows.append(zt.mean(0)[None])
            else:
                rows.append(zt)
    return torch.cat(rows, 0)


@dataclass
class CultureUnitSet:
    """One culture's units and the numbers that chose them."""

    culture: str
    indices: list[int]                 # kept units, by descending WFS_cult
    scores: list[float]                # their WFS_cult
    k: int                             # K before the noun filter (elbow, a bound, or given)
    dropped: list[int]                 # top-K units removed by the noun filter
    curve: Float[Tensor, " M"] = field(repr=False, default=None)        # the sorted ranking score (the elbow curve)
    wfs_cult: Float[Tensor, " M"] = field(repr=False, default=None)
    wfs_noun: Float[Tensor, " M"] = field(repr=False, default=None)
    n_concept: int = 0
    n_noun: int = 0
    k_source: str = "given"            # where K came from: elbow | cap | flat | floor | given | none (circuits.locate.wfs.Elbow)
    k_elbow: int | None = None         # the rank before the sharpest drop, before the bounds (None when K was given)
    k_drop: float | None = None        # that drop, as a ratio of consecutive scores
    n_positive: int = 0                # units with a positive ranking score (the part the elbow looks at)

    def to_json(self) -> dict[str, Any]:
        return {k: jsonable(v) for k, v in self.__dict__.items() if k not in ("curve", "wfs_cult", "wfs_noun")}


@dataclass
class CultureUnits:
    """Result of `culture_units`: per culture, its unit set; the basis; the overlap matrix."""

    basis: UnitBasis
    cultures: dict[str, CultureUnitSet]
    params: dict[str, Any]

    def units(self, culture: str) -> interp.Units:
        """The culture's units as an `interp.Units` (site, indices, scores, label)."""
        u = self.cultures[culture]
        return interp.Units(self.basis.site, list(u.indices), scores=list(u.scores), label=f"{culture}:{self.basis.kind}")

    def units_by_culture(self) -> dict[str, Any]:
        return {c: self.units(c) for c in self.cultures}

    def overlap(self) -> tuple[list[str], list[list[float]]]:
        """Jaccard overlap of the unit sets, culture x culture."""
        names = list(self.cultures)
        sets = [set(self.cultures[c].indices) for c in names]
        m = [[(len(a & b) / len(a | b)) if (a | b) else 0.0 for b in sets] for a in sets]
        return names, m

    def to_json(self) -> dict[str, Any]:
        names, m = self.overlap()
        return {"basis": self.basis.to_json(), "params": jsonable(self.params),
                "cultures": {c: u.to_json() for c, u in self.cultures.items()},
                "overlap": {"cultures": names, "jaccard": m}}

    def to_markdown(self, heading: str | None = None) -> str:
        """The basis, how K was chosen, and one row per culture (K, where it came from, kept and
        dropped units, the top units); `heading` (a Markdown heading line) first when given."""
        p = self.params
        score = "WFS_cult − max over other cultures" if p.get("select") == "specific" else "WFS_cult"
        lines = ([] if heading is None else [heading, ""]) + [
            f"Basis: {self.basis.kind} at `{self.basis.site}`; ranked by {score}.", "",
            ELBOW_RULE.format(score=score, k_min=p.get("k_min"), k_max=p.get("k_max"), drop=p.get("min_drop", 2.0))
            if p.get("k") is None else f"K fixed at {p['k']} for every culture.", "",
            "| culture | K | K from | sharpest drop (rank: ratio) | units > 0 | kept | dropped by noun filter | top units |",
            "|---|---|---|---|---|---|---|---|"]
        for c, u in self.cultures.items():
            drop = "–" if u.k_elbow is None else f"{u.k_elbow}: {u.k_drop:.2f}×"
            lines.append(f"| {c} | {u.k} | {u.k_source} | {drop} | {u.n_positive} | "
                         f"{len(u.indices)} | {len(u.dropped)} | {u.indices[:8]} |")
        src = ", ".join(f"{k}: {v}" for k, v in sorted(k_sources(self).items()))
        return "\n".join(lines + ["", f"K from, over cultures: {src}."])

    def save(self, folder: str | Path) -> Path:
        """units.json + units.safetensors (indices, scores and WFS curves per culture); returns the folder."""
        folder = Path(folder)
        t: dict[str, Tensor] = {}
        for c, u in self.cultures.items():
            t[f"{c}.indices"] = torch.tensor(u.indices, dtype=torch.long)
            t[f"{c}.scores"] = torch.tensor(u.scores, dtype=torch.float64)
            t[f"{c}.wfs_cult"] = u.wfs_cult
            t[f"{c}.wfs_noun"] = u.wfs_noun
            t[f"{c}.curve"] = u.curve
        save_safetensors(folder / "units.safetensors", t, {"site": self.basis.site, "kind": self.basis.kind})
        write_json(folder / "units.json", self)
        return folder

    @classmethod
    def load(cls, folder: str | Path, sae: Any = None) -> "CultureUnits":
        """Read back what `save` wrote; pass the SAE for an SAE basis."""
        folder = Path(folder)
        for f in ("units.json", "units.safetensors"):
            if not (folder / f).is_file():
                raise CultureLensError(f"{folder / f}: missing; a units folder is written by CultureUnits.save / find-units")
        meta = json.loads((folder / "units.json").read_text())
        t = load_file(str(folder / "units.safetensors"))
        if meta["basis"]["kind"] == "sae" and sae is None:
            raise CultureLensError(f"{folder}/units.json: units are SAE latents of {meta['basis']['site']}; pass sae=")
        basis = UnitBasis(meta["basis"]["site"], sae if meta["basis"]["kind"] == "sae" else None)
        cultures = {}
        for c, d in meta["cultures"].items():
            wc = t[f"{c}.wfs_cult"]
            curve = t[f"{c}.curve"] if f"{c}.curve" in t else torch.sort(wc, descending=True).values
            cultures[c] = CultureUnitSet(
                c, t[f"{c}.indices"].tolist(), t[f"{c}.scores"].tolist(), d["k"], d["dropped"],
                curve, wc, t[f"{c}.wfs_noun"], d.get("n_concept", 0), d.get("n_noun", 0),
                d.get("k_source", "given"), d.get("k_elbow"), d.get("k_drop"), d.get("n_positive", 0),
            )
        return cls(basis, cultures, meta["params"])

    def plot(self, path: str | Path | None = None) -> Figure:
        """The sorted WFS curves (elbow K marked) beside the unit overlap, in one figure. The old
        form, a folder, still writes wfs_curves.png and unit_overlap.png there (DeprecationWarning)."""
        if path is not None and Path(path).is_dir():
            warnings.warn(f"CultureUnits.plot({str(path)!r}): a folder is the old form; use plot_wfs(folder / "
                          "'wfs_curves.png') and plot_overlap(folder / 'unit_overlap.png'), or plot(file)",
                          DeprecationWarning, stacklevel=2)
            self.plot_wfs(Path(path) / "wfs_curves.png")
            self.plot_overlap(Path(path) / "unit_overlap.png")
            return self.plot()
        names, m = self.overlap()
        return plot_units(self._curves(), {c: u.k for c, u in self.cultures.items()}, names, m, path)

    def plot_wfs(self, path: str | Path | None = None) -> Figure:
        """Sorted WFS_cult per culture with the elbow K marked."""
        return plot_wfs_curves(self._curves(), {c: u.k for c, u in self.cultures.items()}, path)

    def plot_overlap(self, path: str | Path | None = None) -> Figure:
        """Jaccard overlap of the unit sets, culture x culture."""
        names, m = self.overlap()
        return plot_overlap(names, m, path)

    def _curves(self) -> dict[str, list[float]]:
        return {c: u.curve.tolist() for c, u in self.cultures.items()}


def k_sources(units: CultureUnits) -> dict[str, int]:
    """How many cultures got K from each source (elbow, cap, floor, positive, given, none)."""
    out: dict[str, int] = {}
    for u in units.cultures.values():
        out[u.k_source] = out.get(u.k_source, 0) + 1
    return out


@switch
def culture_units(
    model,
    basis: Any,
    pairs_by_culture: dict[str, Sequence[Any]] | Sequence[Any],
    site: str | None = None,
    eps: float = 0.0,
    beta: float = 1e-6,
    rho: float = 0.5,
    k: int | None = None,
    k_min: int = 1,
    k_max: int | None = 64,
    pool: str = "max",
    batch_size: int = 16,
    *,
    interventions: Sequence[Any] = (),
    select: str = "wfs",
    min_drop: float = MIN_DROP,
    progress: bool = True,
) -> CultureUnits:
    """Per culture: WFS on its concept (modifier+noun) prompts and on its noun-only prompts,
    rank by WFS_cult, elbow K (decision 6: the sharpest drop of at least `min_drop` between
    consecutive positive scores, `circuits.locate.wfs.elbow_k`), then the noun-side filter (decision 7).

    `select="specific"` ranks by WFS_cult(A) minus the largest WFS_cult of any other culture
    (`circuits.locate.wfs.specificity`): only units that A's prompts drive harder than every other
    culture's can be chosen, so a unit shared by many cultures ("culture in general") is not.
    The elbow then runs on that score's positive part; the noun filter stays on WFS.

    `basis`: an SAE (with `site`), a site name (native neurons, e.g. `text.blocks.3.mlp.hook_post`),
    a layer index (its MLP neurons) or a `UnitBasis`. `pairs_by_culture`: a dict culture -> pairs,
    or a flat list of pairs/records grouped by their culture. `interventions` are active while
    reading the units (e.g. a planted direction in a test, or another culture's mask)."""
    b = as_basis(basis, site)
    if isinstance(pairs_by_culture, dict):
        groups = {c: sorted(as_pairs(v), key=PromptPair.key) for c, v in sorted(pairs_by_culture.items())}
    else:
        groups = by_concept(as_pairs(pairs_by_culture))
    if not groups:
        raise CultureLensError("culture_units: no cultures given")
    # One pass over every prompt of every culture (both sides): fewer, fuller encoder calls.
    texts = [p.concept_prompt for ps in groups.values() for p in ps] + [p.noun_prompt for ps in groups.values() for p in ps]
    if pool == "tokens":
        raise CultureLensError("culture_units: pool='tokens' gives one row per token; use unit_rows directly for it")
    if select not in SELECT:
        raise CultureLensError(f"culture_units: select must be one of {SELECT}; got {select!r}")
    if select == "specific" and len(groups) < 2:
        raise CultureLensError(f"culture_units: select='specific' compares cultures; got only {sorted(groups)}")
    z = unit_rows(model, b, texts, pool, batch_size, desc=f"units @ {b.site}", interventions=interventions)
    half = len(texts) // 2
    scores, start = {}, 0
    for c, ps in groups.items():
        zc, zn = z[start : start + len(ps)], z[half + start : half + start + len(ps)]
        start += len(ps)
        scores[c] = (wfs(zc, eps, beta), wfs(zn, eps, beta), zc.shape[0], zn.shape[0])
    spec = specificity(torch.stack([s[0] for s in scores.values()])) if select == "specific" else None
    out = {}
    for i, (c, (wc, wn, n_c, n_n)) in enumerate(scores.items()):
        sel = select_units(wc, wn, k=k, k_min=k_min, k_max=k_max, rho=rho,
                           rank_score=None if spec is None else spec[i], min_drop=min_drop)
        out[c] = CultureUnitSet(
            c, sel.kept.tolist(), wc[sel.kept].tolist(), sel.k, sel.dropped.tolist(),
            sel.rank_score[sel.order], wc, wn, n_c, n_n, sel.k_source, sel.elbow.raw, sel.elbow.drop,
            sel.elbow.n_positive,
        )
    params = dict(eps=eps, beta=beta, rho=rho, k=k, k_min=k_min, k_max=k_max, pool=pool, select=select,
                  min_drop=min_drop)
    return CultureUnits(b, out, params)


def sae_or_neurons(layer: int, sae_path: str | None = None, encoder: str = "text") -> UnitBasis:
    """SAE latents of the layer's output (decision 3) when an SAE is given, else its MLP neurons."""
    if sae_path is None:
        return neuron_basis(layer, encoder)
    import warnings

    import sae as sae_pkg

    s = sae_pkg.load_saelens(sae_path)
    want = f"{encoder}.blocks.{layer}.hook_resid_post"
    have = ((getattr(s, "saelens_cfg", None) or {}).get("metadata", {}) or {}).get("hook_name")
    if have and have != want:
        warnings.warn(f"{sae_path}: SAE trained at {have!r}, not at the chosen {want!r}; using its own site", stacklevel=2)
    return sae_basis(s, have or want)


def as_culture_units(units: Any, sae: Any = None) -> CultureUnits:
    """A `CultureUnits`, or a dict culture -> `interp.Units` (all at one site; `sae` given when
    they are SAE latents) turned into one."""
    if isinstance(units, CultureUnits):
        return units
    if not isinstance(units, dict) or not units:
        raise CultureLensError(f"expected CultureUnits or a non-empty dict culture -> interp.Units; got {type(units).__name__}")
    sites = {u.site for u in units.values()}
    if len(sites) != 1:
        raise CultureLensError(f"units of all cultures must share one site; got {sorted(sites)}")
    basis = UnitBasis(sites.pop(), sae)
    sets = {}
    for c, u in units.items():
        idx = [int(i) for i in torch.as_tensor(u.indices).reshape(-1).tolist()]
        sc = [float(x) for x in (u.scores if u.scores is not None else [float("nan")] * len(idx))]
        sets[c] = CultureUnitSet(c, idx, sc, len(idx), [])
    return CultureUnits(basis, sets, {"from": "interp.Units"})

"""Exhaustive causal sweep (our addition, the ground truth for the Delta-CA scan): at every
layer, find units, mask the same number of top units and measure the CultureVQA drop.

Like with like: detection finds SAE latents of the culture layer's residual stream, so the
question "is the Delta-CA layer the causal one?" is asked with an SAE per layer
(`basis_for={layer: sae}`); MLP neurons are the default only when no SAE is given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

from interp.progress import bar, switch

from interp.checks import moved, renamed
from interp.errors import CultureLensError
from interp.result_io import DataclassResult

from circuits.evaluate import SETTINGS_FIELDS, ScoreSettings
from circuits.results import Rate
from circuits.pairs import as_pairs, by_concept, check_disjoint
from circuits.plots import plot_causal_sweep
from circuits.results import jsonable
from circuits.locate.units import CultureUnits, UnitBasis, as_basis, culture_units, neuron_basis

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class CausalSweep(DataclassResult):
    """Result of `causal_sweep`: per layer the CultureVQA with its top units masked and the drop
    from the baseline, the layers ranked by drop and the ΔCA-chosen layer's rank. `save(folder)`
    writes causal_sweep.json (`to_json`) and causal_sweep.safetensors."""

    result_name: ClassVar[str] = "causal_sweep"

    layers: list[int]
    n_units: int
    baseline: Rate
    masked: list[Rate]
    drops: list[float]              # baseline - masked accuracy, per layer
    ranking: list[int]              # layers by descending drop (ties: lower layer first)
    chosen: int | None              # the Delta-CA layer, if given
    chosen_rank: int | None         # 1 + number of layers with a strictly larger drop (1 = causal top-1)
    n_tied: int                     # other layers whose drop equals the chosen layer's
    basis_kind: str
    sites: list[str] | None = None  # the unit basis' site per layer
    n_masked: list[float] | None = None   # units actually masked per culture, mean over cultures, per layer
    shared_prompts: int = 0         # prompt texts shared by the probe and evaluation sets (0 unless allowed)

    @property
    def chosen_is_top1(self) -> bool | None:
        return None if self.chosen_rank is None else self.chosen_rank == 1

    @property
    def chosen_is_top2(self) -> bool | None:
        return None if self.chosen_rank is None else self.chosen_rank <= 2

    def to_json(self) -> dict[str, Any]:
        d = jsonable(self.__dict__)
        d.update(chosen_is_top1=self.chosen_is_top1, chosen_is_top2=self.chosen_is_top2)
        return d

    def to_markdown(self, heading: str | None = None) -> str:
        """What was masked, one row per layer (masked CultureVQA, drop, units masked) and the
        chosen layer's rank; `heading` (a Markdown heading line) first when given."""
        what = "SAE latents (one SAE per layer)" if self.basis_kind == "sae" else "MLP neurons"
        sites = f" at `{self.sites[0]}` … `{self.sites[-1]}`" if self.sites else ""
        lines = ([] if heading is None else [heading, ""]) + [
            f"Masking the top {self.n_units} {what} per culture at each layer{sites}; baseline {_pct(self.baseline)}."
            + (f" **Probe and evaluation share {self.shared_prompts} prompts (allowed explicitly).**"
               if self.shared_prompts else ""),
            "", "| layer | masked CultureVQA | drop | units masked per culture |", "|---|---|---|---|"]
        n_masked = self.n_masked or [float("nan")] * len(self.layers)
        for l, m, d, k in zip(self.layers, self.masked, self.drops, n_masked):
            lines.append(f"| {l}{' (ΔCA)' if l == self.chosen else ''} | {_pct(m)} | {100 * d:.1f} | {k:.1f} |")
        if self.chosen is not None:
            lines.append(f"\nThe ΔCA-chosen layer {self.chosen} is causal rank {self.chosen_rank} "
                         f"(top-1: {self.chosen_is_top1}, top-2: {self.chosen_is_top2}; tied with {self.n_tied} other layers).")
        return "\n".join(lines)

    def plot(self, path: str | Path | None = None) -> Figure:
        """CultureVQA drop per layer, the ΔCA-chosen layer in red (`circuits.plots.plot_causal_sweep`)."""
        return plot_causal_sweep(self, path)


def _pct(r: Rate) -> str:
    return f"{100 * r.mean:.1f}% [{100 * r.low:.1f}, {100 * r.high:.1f}]"


def top_n(units: CultureUnits, n: int) -> CultureUnits:
    """Keep each culture's first n units (they are sorted by WFS_cult)."""
    from dataclasses import replace

    return CultureUnits(units.basis, {c: replace(u, indices=u.indices[:n], scores=u.scores[:n])
                                      for c, u in units.cultures.items()}, dict(units.params, n=n))


def rank_layers(layers: Sequence[int], drops: Sequence[float], chosen: int | None = None
                ) -> tuple[list[int], int | None, int | None]:
    """Layers by descending drop (ties: lower layer first); the chosen layer's rank = 1 + the
    number of layers whose drop is strictly larger (ties share the better rank), and how many
    other layers tie with it. (None, None) when no chosen layer is given or it was not swept."""
    if len(layers) != len(drops):
        raise CultureLensError(f"rank_layers: {len(layers)} layers but {len(drops)} drops")
    ranking = [layers[i] for i in sorted(range(len(layers)), key=lambda i: (-drops[i], layers[i]))]
    if chosen is None or chosen not in layers:
        return ranking, None, None
    d = drops[list(layers).index(chosen)]
    return ranking, 1 + sum(x > d for x in drops), sum(x == d for x in drops) - 1


@renamed(steps="num_steps")
@moved(ScoreSettings, *SETTINGS_FIELDS, param="settings", where="circuits.causal_sweep")
@switch
def causal_sweep(
    model,
    probe_pairs: Sequence[Any],
    eval_pairs: Sequence[Any],
    judge: Callable,
    n_units: int = 8,
    layers: Sequence[int] | None = None,
    encoder: str = "text",
    basis_for: Callable[[int], Any] | Mapping[int, Any] | None = None,
    chosen: int | None = None,
    rho: float = 0.5,
    *,
    settings: ScoreSettings | None = None,
    allow_overlap: bool = False,
    progress: bool = True,
) -> CausalSweep:
    """For each layer: units from `probe_pairs` (all passing the noun filter, ranked by WFS_cult,
    first `n_units` per culture), mask them on `eval_pairs`' concept prompts, judge.

    `basis_for` picks each layer's basis: a dict layer -> SAE (latents of that layer's
    `hook_resid_post` unless the SAE names its own hook) or `UnitBasis`, or a function of the
    layer; default: that layer's MLP neurons. Probe and evaluation pairs that share a prompt
    are refused unless `allow_overlap`. `settings` (`circuits.ScoreSettings`; None: its
    defaults): image noise, denoising steps, batch size (also of the unit search), bootstrap
    resamples."""
    from circuits.evaluate import score
    from circuits.causal.validate import masked_interventions

    st = ScoreSettings() if settings is None else settings
    seed, batch_size, n_boot = st.seed, st.batch_size, st.n_boot

    te = model.encoder(encoder)
    ls = list(range(te.n_layers)) if layers is None else list(layers)
    if not ls:
        raise CultureLensError("causal_sweep: no layers")
    pick = _basis_picker(basis_for, encoder, ls)
    groups = by_concept(as_pairs(eval_pairs))
    probe = as_pairs(probe_pairs)
    shared = check_disjoint(probe, eval_pairs, ("probe", "evaluation"), allow_overlap)
    bases = {l: pick(l) for l in ls}
    kinds = sorted({b.kind for b in bases.values()})
    if len(kinds) > 1:
        raise CultureLensError(f"causal_sweep: every layer needs the same kind of basis; got {kinds} "
                               f"({ {l: b.kind for l, b in bases.items()} })")
    base = score(model, groups, judge, None, "concept", None, settings=st, desc="baseline")
    masked, n_masked = [], []
    for l in bar(ls, desc="causal sweep"):
        b = bases[l]
        if b.layer != l:
            raise CultureLensError(f"causal_sweep: the basis for layer {l} reads {b.site!r} (layer {b.layer})")
        # k = all units: the noun filter then ranks every surviving unit, and we keep the first n.
        found = culture_units(model, b, probe, k=b_dim(model, b), rho=rho, batch_size=batch_size)
        found = top_n(found, n_units)
        n_masked.append(sum(len(u.indices) for u in found.cultures.values()) / max(len(found.cultures), 1))
        s = score(model, groups, judge, lambda c: masked_interventions(found, c) if c in found.cultures else [],
                  "concept", None, settings=st, desc=f"layer {l}")
        masked.append(Rate.of(s.correct, n_boot, seed))
    b0 = Rate.of(base.correct, n_boot, seed)
    drops = [b0.mean - m.mean for m in masked]
    ranking, rank, tied = rank_layers(ls, drops, chosen)
    return CausalSweep(ls, n_units, b0, masked, drops, ranking, chosen, rank, tied, kinds[0],
                       [bases[l].site for l in ls], n_masked, shared)


def _basis_picker(basis_for: Any, encoder: str, layers: Sequence[int]) -> Callable[[int], UnitBasis]:
    if basis_for is None:
        return lambda l: neuron_basis(l, encoder)
    if isinstance(basis_for, Mapping):
        missing = [l for l in layers if l not in basis_for]
        if missing:
            raise CultureLensError(f"causal_sweep: no basis for layers {missing} (given for {sorted(basis_for)})")
        return lambda l: _layer_basis(basis_for[l], encoder, l)
    return lambda l: _layer_basis(basis_for(l), encoder, l)


def _layer_basis(b: Any, encoder: str, layer: int) -> UnitBasis:
    """A basis for one layer; an SAE without a hook name reads that layer's residual stream."""
    if hasattr(b, "encode") and not isinstance(b, UnitBasis):
        try:
            return as_basis(b)
        except CultureLensError:
            return as_basis(b, f"{encoder}.blocks.{layer}.hook_resid_post")
    return as_basis(b)


def b_dim(model, basis: UnitBasis) -> int:
    """Number of units in a basis: d_sae for SAE latents, the site's size for neurons."""
    if basis.kind == "sae":
        return int(basis.sae.d_sae)
    from interp.model.sites import parse

    return int(parse(model, basis.site).dim)

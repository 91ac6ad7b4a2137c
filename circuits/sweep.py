"""Exhaustive causal sweep (our addition, the ground truth for the Delta-CA scan): at every
layer, find units, mask the same number of top units and measure the CultureVQA drop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from interp.errors import CultureLensError

from .amplify import Rate
from .pairs import as_pairs, by_concept
from .results import jsonable, write_json
from .units import CultureUnits, UnitBasis, culture_units, neuron_basis


@dataclass
class CausalSweep:
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

    def save(self, path) -> None:
        write_json(path, self)

    def plot(self, path) -> None:
        from .plots import _plt, _save

        plt = _plt()
        fig, ax = plt.subplots(figsize=(max(4, 0.4 * len(self.layers) + 2), 3.2))
        colors = ["C3" if l == self.chosen else "C0" for l in self.layers]
        ax.bar(self.layers, self.drops, color=colors)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("layer (red: ΔCA-chosen)")
        ax.set_ylabel("CultureVQA drop when masked")
        ax.set_title(f"causal sweep: top {self.n_units} {self.basis_kind} units per culture masked")
        _save(fig, path)


def top_n(units: CultureUnits, n: int) -> CultureUnits:
    """Keep each culture's first n units (they are sorted by WFS_cult)."""
    from dataclasses import replace

    return CultureUnits(units.basis, {c: replace(u, indices=u.indices[:n], scores=u.scores[:n])
                                      for c, u in units.cultures.items()}, dict(units.params, n=n))


def causal_sweep(
    model,
    probe_pairs: Sequence[Any],
    eval_pairs: Sequence[Any],
    judge: Callable,
    n_units: int = 8,
    layers: Sequence[int] | None = None,
    encoder: str = "text",
    basis_for: Callable[[int], UnitBasis] | None = None,
    chosen: int | None = None,
    rho: float = 0.5,
    seed: int = 0,
    steps: int | None = None,
    batch_size: int = 8,
    n_boot: int = 1000,
) -> CausalSweep:
    """For each layer: units from `probe_pairs` (all passing the noun filter, ranked by WFS_cult,
    first `n_units` per culture), mask them on `eval_pairs`' concept prompts, judge.
    `basis_for(layer)` picks the basis (default: that layer's MLP neurons)."""
    from .evaluate import score
    from .validate import masked_interventions

    te = model.encoder(encoder)
    ls = list(range(te.n_layers)) if layers is None else list(layers)
    if not ls:
        raise CultureLensError("causal_sweep: no layers")
    basis_for = basis_for or (lambda l: neuron_basis(l, encoder))
    groups = by_concept(as_pairs(eval_pairs))
    probe = as_pairs(probe_pairs)
    base = score(model, groups, judge, None, "concept", None, seed, steps, batch_size, desc="baseline")
    masked, kind = [], "neuron"
    for l in tqdm(ls, desc="causal sweep"):
        b = basis_for(l)
        kind = b.kind
        # k = all units: the noun filter then ranks every surviving unit, and we keep the first n.
        found = culture_units(model, b, probe, k=b_dim(model, b), rho=rho, batch_size=batch_size)
        found = top_n(found, n_units)
        s = score(model, groups, judge, lambda c: masked_interventions(found, c) if c in found.cultures else [],
                  "concept", None, seed, steps, batch_size, desc=f"layer {l}")
        masked.append(Rate.of(s.correct, n_boot, seed))
    b0 = Rate.of(base.correct, n_boot, seed)
    drops = [b0.mean - m.mean for m in masked]
    ranking = [ls[i] for i in sorted(range(len(ls)), key=lambda i: (-drops[i], ls[i]))]
    rank = tied = None
    if chosen is not None and chosen in ls:
        d = drops[ls.index(chosen)]
        rank = 1 + sum(x > d for x in drops)
        tied = sum(x == d for x in drops) - 1
    return CausalSweep(ls, n_units, b0, masked, drops, ranking, chosen, rank, tied, kind)


def b_dim(model, basis: UnitBasis) -> int:
    """Number of units in a basis: d_sae for SAE latents, the site's size for neurons."""
    if basis.kind == "sae":
        return int(basis.sae.d_sae)
    from interp.sites import parse

    return int(parse(model, basis.site).dim)

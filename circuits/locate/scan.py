"""Culture-layer scan (PAPER.md Step 1): Delta-CA per text-encoder layer, bootstrap CIs,
the neighbour-peak rule and the chosen layer, for every encoder of a pipeline."""

from __future__ import annotations

import warnings

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from interp.progress import bar, switch

from interp.errors import CultureLensError, PromptTooLongError
from interp.result_io import DataclassResult

from circuits import stats as sb
from circuits.locate import ca as cam
from circuits.pairs import PromptPair, as_pairs
from circuits.plots import plot_layer_scan
from circuits.results import jsonable
from circuits.locate.tokens import pair_spans

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class EncoderScan:
    """Delta-CA of one encoder. Arrays are per layer (index = layer)."""

    encoder: str
    direction: str
    causal: bool
    layers: list[int]
    delta: list[float]              # mean over pairs of CA(concept) - CA(noun)
    ci_low: list[float]
    ci_high: list[float]
    ca_concept: list[float]
    ca_noun: list[float]
    excess: list[float]             # delta minus the mean of its neighbours
    excess_low: list[float]
    excess_high: list[float]
    sensitive: list[int]            # layers whose excess CI lies above `margin`
    chosen: int                     # the sensitive layer with the largest excess (else the largest excess)
    chosen_is_sensitive: bool
    stability: list[float]          # fraction of bootstrap resamples whose largest excess is at each layer
    n_pairs: int
    n_masked: int                   # pairs dropped because their concept block is fully masked
    per_pair: Float[Tensor, "N L"] | None = field(default=None, repr=False)
    min_pairs: int = 0              # fewer usable pairs than this: no layer is called sensitive

    def to_json(self) -> dict[str, Any]:
        d = {k: jsonable(v) for k, v in self.__dict__.items() if k != "per_pair"}
        return d


@dataclass
class LayerScan(DataclassResult):
    """Result of `culture_layer_scan`: one `EncoderScan` per encoder. `save(folder)` writes
    layer_scan.json (`to_json`) and layer_scan.safetensors (each encoder's `per_pair`)."""

    result_name: ClassVar[str] = "layer_scan"

    encoders: dict[str, EncoderScan]
    seeds: list[int]
    ci: float

    @property
    def chosen(self) -> int:
        """The chosen layer of the first encoder ("text")."""
        return next(iter(self.encoders.values())).chosen

    def to_json(self) -> dict[str, Any]:
        return {"seeds": self.seeds, "ci": self.ci, "encoders": {k: v.to_json() for k, v in self.encoders.items()}}

    def to_markdown(self, heading: str | None = None) -> str:
        """One line per encoder: the chosen layer, its ΔCA, why it is (not) sensitive, its
        bootstrap stability; `heading` (a Markdown heading line) first when given."""
        lines = [] if heading is None else [heading, ""]
        for name, e in self.encoders.items():
            j = e.layers.index(e.chosen)
            lines += [f"- `{name}` ({e.direction}, {e.n_pairs} pairs{', ' + str(e.n_masked) + ' masked' if e.n_masked else ''}): "
                      f"chosen layer **{e.chosen}** (ΔCA {e.delta[j]:.4g}, {_sensitivity(e)}; "
                      f"bootstrap stability {e.stability[j]:.2f}); sensitive layers: {e.sensitive}"]
        return "\n".join(lines)

    def plot(self, path: str | Path | None = None) -> Figure:
        """ΔCA by layer with its CI band, one panel per encoder (`circuits.plots.plot_layer_scan`)."""
        return plot_layer_scan(self, path)


def _sensitivity(e: EncoderScan) -> str:
    """Why the chosen layer is (not) called sensitive."""
    if e.chosen_is_sensitive:
        return "sensitive"
    if e.n_pairs < e.min_pairs:
        return f"too few usable pairs to call a layer sensitive: {e.n_pairs} < min_pairs {e.min_pairs}"
    return "no layer clears the neighbour-peak CI"


def default_direction(model, encoder: str) -> str:
    """Decision 2: modifier->noun for bidirectional encoders, noun->modifier for causal ones."""
    return "noun->modifier" if model.encoders[encoder].causal else "modifier->noun"


def _pattern_sites(encoder: str, layers: Sequence[int]) -> list[str]:
    return [f"{encoder}.blocks.{l}.attn.hook_pattern" for l in layers]


def layer_ca(
    model,
    prompts: Sequence[str],
    modifier_sets: Sequence[Sequence[int]],
    noun_sets: Sequence[Sequence[int]],
    encoder: str,
    layers: Sequence[int],
    direction: str,
    batch_size: int = 16,
    desc: str = "CA",
    interventions: Sequence[Any] = (),
    trim: bool = True,
) -> Float[Tensor, "N L"]:
    """CA per prompt and layer from captured, head-averaged attention probabilities."""
    from circuits.locate.acts import encoder_acts

    sites = _pattern_sites(encoder, layers)
    out = []
    for s in bar(range(0, len(prompts), batch_size), desc=desc, leave=False):
        batch = list(prompts[s : s + batch_size])
        acts = encoder_acts(model, batch, sites, encoder, interventions, trim)
        S = acts[sites[0]].shape[-1]
        m = cam.indicator(modifier_sets[s : s + batch_size], S, "modifier tokens")
        n = cam.indicator(noun_sets[s : s + batch_size], S, "noun tokens")
        # Head-average once per layer; "both" then reuses it for its two blocks.
        out.append(torch.stack([cam.prompt_ca(acts[site].mean(1), m, n, direction) for site in sites], 1))
    return torch.cat(out, 0)


@switch
def culture_layer_scan(
    model,
    pairs: Sequence[Any],
    direction: str | None = None,
    seeds: Sequence[int] = (0,),
    encoders: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    english: bool = False,
    n_boot: int = 1000,
    ci: float = 0.95,
    margin: float = 0.0,
    batch_size: int = 16,
    *,
    interventions: Sequence[Any] = (),
    trim: bool = True,
    min_pairs: int = 20,
    progress: bool = True,
) -> LayerScan:
    """Delta-CA (Eq. 1-3) of every layer of each encoder.

    `direction`: "modifier->noun", "noun->modifier" or "both"; None picks per encoder by
    decision 2. A direction whose concept-prompt block is masked for every pair raises
    `DirectionMaskedError`; pairs masked only in part of the set are dropped and counted.
    `seeds` seed the bootstrap (CIs with the first; `stability` over all).
    Pairs are put in a canonical order first, so the result does not depend on their order.
    `interventions` are active during the encoder passes. `trim` cuts padding where exact
    (see `circuits.locate.acts`); the result matches the padded computation to float precision.
    With fewer than `min_pairs` usable pairs no layer is called sensitive (a warning says so).
    """
    pairs = sorted(as_pairs(pairs, english=english), key=PromptPair.key)
    if not seeds:
        raise CultureLensError("culture_layer_scan: seeds must not be empty")
    encs = list(encoders) if encoders is not None else list(model.encoders)
    out: dict[str, EncoderScan] = {}
    for enc in encs:
        if enc not in model.encoders:
            raise CultureLensError(f"culture_layer_scan: unknown encoder {enc!r}; valid: {sorted(model.encoders)}")
        te = model.encoders[enc]
        d = direction or default_direction(model, enc)
        if d not in cam.DIRECTIONS:
            raise CultureLensError(f"culture_layer_scan: direction must be one of {cam.DIRECTIONS}; got {d!r}")
        ls = list(range(te.n_layers)) if layers is None else list(layers)
        bad = [l for l in ls if not 0 <= l < te.n_layers]
        if bad:
            raise CultureLensError(f"culture_layer_scan: layer {bad[0]} outside [0, {te.n_layers}) of encoder {enc!r}")
        try:
            out[enc] = _scan_encoder(model, pairs, enc, te.causal, ls, d, list(seeds), n_boot, ci, margin, batch_size,
                                     list(interventions), trim, min_pairs)
        except PromptTooLongError as e:
            # CA needs every modifier and noun token, so truncating would score a different prompt:
            # the scan offers no truncate= and says so (the tokenizer's own message suggests it).
            raise PromptTooLongError(f"culture_layer_scan on encoder {enc!r}: {str(e).split(' (pass truncate')[0]}; "
                                     "the scan needs whole prompts (CA reads the modifier and noun tokens): "
                                     "shorten or drop that pair") from None
    return LayerScan(out, list(seeds), ci)


def _scan_encoder(model, pairs, enc, causal, layers, direction, seeds, n_boot, ci, margin, batch_size, ivs, trim,
                  min_pairs: int = 20) -> EncoderScan:
    sp = pair_spans(model, pairs, enc)
    S = sp.seq_len
    mod = cam.indicator(sp.modifier, S)
    noun = cam.indicator(sp.noun, S)
    ok = torch.stack([cam.block_allowed(q, k, causal) for q, k in cam.directional_sets(direction, mod, noun)]).any(0)
    if not ok.any():
        raise cam.DirectionMaskedError(
            f"encoder {enc!r} is causal and direction {direction!r} is fully masked in every pair "
            f"(e.g. pair 0: modifier tokens {sp.modifier[0]}, noun tokens {sp.noun[0]}); use direction='noun->modifier' or 'both'"
        )
    keep = ok.nonzero().flatten().tolist()
    P = [pairs[i] for i in keep]
    def pick(xs):
        return [xs[i] for i in keep]
    c = layer_ca(model, [p.concept_prompt for p in P], pick(sp.modifier), pick(sp.noun), enc, layers, direction,
                 batch_size, desc=f"{enc} concept", interventions=ivs, trim=trim)
    n = layer_ca(model, [p.noun_prompt for p in P], pick(sp.noun_only_src), pick(sp.noun_only_noun), enc, layers,
                 direction, batch_size, desc=f"{enc} noun", interventions=ivs, trim=trim)
    diff = c - n
    exc = cam.neighbour_excess(diff)
    dci = sb.mean_ci_columns(diff, n_boot, ci, seeds[0])
    eci = sb.mean_ci_columns(exc, n_boot, ci, seeds[0])
    mean_exc = exc.mean(0)
    sensitive = [layers[j] for j in range(len(layers)) if eci[j, 1] > margin]
    if sensitive and len(P) < min_pairs:
        # A CI over a handful of pairs clears the neighbour peak by chance (random weights do, at 8).
        warnings.warn(f"culture_layer_scan: {enc}: {len(P)} usable pairs, fewer than min_pairs={min_pairs}: no "
                      f"layer is called sensitive (the CI would clear {sensitive}); the chosen layer is the largest "
                      "mean excess", stacklevel=3)
        sensitive = []
    if sensitive:
        j = max((layers.index(l) for l in sensitive), key=lambda j: mean_exc[j].item())
    else:
        j = int(torch.argmax(mean_exc))
    # Stability: how often a bootstrap resample of pairs puts the largest excess at each layer.
    counts = np.zeros(len(layers))
    N = diff.shape[0]
    for s in seeds:
        g = np.random.default_rng(s)
        for _ in range(max(1, n_boot // 10)):
            idx = torch.as_tensor(g.integers(0, N, N))
            counts[int(torch.argmax(exc[idx].mean(0)))] += 1
    return EncoderScan(
        encoder=enc, direction=direction, causal=causal, layers=layers,
        delta=diff.mean(0).tolist(), ci_low=dci[:, 1].tolist(), ci_high=dci[:, 2].tolist(),
        ca_concept=c.mean(0).tolist(), ca_noun=n.mean(0).tolist(),
        excess=mean_exc.tolist(), excess_low=eci[:, 1].tolist(), excess_high=eci[:, 2].tolist(),
        sensitive=sensitive, chosen=layers[j], chosen_is_sensitive=bool(sensitive),
        stability=(counts / counts.sum()).tolist(), n_pairs=len(P), n_masked=len(pairs) - len(P), per_pair=diff,
        min_pairs=min_pairs,
    )

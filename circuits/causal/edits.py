"""Unit edits on a basis (native neurons or SAE latents): scale chosen units, draw a random control
set of the same size. Shared by the amplifier (`circuits.causal.amplify`), validation
(`circuits.causal.validate`) and the real-encoder study, below all of them."""

from __future__ import annotations

from typing import Any, Sequence

import interp
import sae

from circuits.locate.units import UnitBasis


def scale_units(basis: UnitBasis, indices: Sequence[int], lam: float, keep_error: bool = True, label: str | None = None) -> Any:
    """An intervention scaling `indices` by (1 + lam) at the basis site: lam = -1 masks them.

    Native neurons: `interp.Mask` (lam = -1) or `interp.Amplify`. SAE latents: `sae.Steer`,
    which keeps the SAE error by default (decision 4: lam = 0 is then exactly the identity);
    `keep_error=False` is the paper-literal replacement F' = decode(Z_enh)."""
    idx = [int(i) for i in indices]
    if basis.kind == "sae":
        return sae.Steer(basis.sae, basis.site, idx, lam, keep_error=keep_error)
    units = interp.Units(basis.site, idx, label=label)
    if lam == -1:
        return interp.Mask(units)
    return interp.Amplify(units, lam)


def random_indices(basis: UnitBasis, model, indices: Sequence[int], seed: int, match: str | None = None,
                   reference: Any = None) -> list[int]:
    """Same count, same site, disjoint from `indices`, seeded (`interp.random_units`). `match`
    None: uniform over the site's units (native neurons) or the SAE's d_sae latents (the
    paper's control); "activity": matched in firing frequency and magnitude on `reference`
    ([n, M] unit activations, e.g. `circuits.causal.validate.reference_activity`)."""
    u = interp.Units(basis.site, list(indices))
    if match is not None:
        return interp.random_units(u, seed=seed, match=match, reference=reference).indices.tolist()
    if basis.kind == "sae":
        r = interp.random_units(u, seed=seed, disjoint=True, dim=basis.sae.d_sae)
    else:
        r = interp.random_units(u, seed=seed, disjoint=True, model=model)
    return r.indices.tolist()

"""Planted-dictionary data for checking that an SAE recovers known atoms."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

# The data's random stream is seeded away from small integers: TopKSAE(d_in, d_sae, seed=s) draws
# its decoder as randn(d_sae, d_in) from seed s, so planted(..., seed=s) with n_atoms = d_sae
# would otherwise plant exactly the SAE's initial decoder (full "recovery" before any training).
# torch's CPU generator keeps only a seed's low 32 bits, so the offset lives within them.
STREAM_OFFSET = 0x5EED_5EED


def planted(n: int, d_in: int, n_atoms: int, k_true: int, noise: float = 0.01, seed: int = 0
            ) -> tuple[Float[Tensor, "n d_in"], Float[Tensor, "n_atoms d_in"]]:
    """x = Σ_j c_j·D_j + ε with k_true atoms per row drawn uniformly, c ~ 1 + |N(0,1)|, D a
    random unit-norm dictionary and ε ~ N(0, noise²). Returns (x, D). The generator is seeded
    with seed + STREAM_OFFSET, never an SAE's own init stream."""
    g = torch.Generator().manual_seed(seed + STREAM_OFFSET)
    D = torch.randn(n_atoms, d_in, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    idx = torch.rand(n, n_atoms, generator=g).topk(k_true, dim=1).indices
    coef = 1 + torch.randn(n, k_true, generator=g).abs()
    x = torch.einsum("nk,nkd->nd", coef, D[idx]) + noise * torch.randn(n, d_in, generator=g)
    return x, D


def recovery(decoder: Float[Tensor, "m d_in"], atoms: Float[Tensor, "n_atoms d_in"],
             threshold: float = 0.9) -> tuple[float, Float[Tensor, " n_atoms"]]:
    """Fraction of true atoms whose best-matching decoder row has cosine ≥ threshold, and the
    best cosine of each atom."""
    dec = decoder / decoder.norm(dim=1, keepdim=True)
    at = atoms / atoms.norm(dim=1, keepdim=True)
    best = (at @ dec.t()).max(dim=1).values
    return float((best >= threshold).float().mean()), best

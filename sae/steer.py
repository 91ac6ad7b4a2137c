"""SAE interventions for `interp`: splice the SAE into a site, or steer chosen latents."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from sae.errors import SAEError
from sae.model import TopKSAE


class Steer:
    """An `interp` intervention on `site`: encode the activation, scale latents by (1+λ)
    (or set them to `value`), decode. Optional `positions` / `steps` as in interp.

    keep_error=True returns act + (steered − plain reconstruction): the SAE's error is kept
    and λ = 0 is exactly the identity (the two decodes are the same float ops). With
    keep_error=False the activation is replaced by the (steered) reconstruction; with no
    latents that is the plain splice decode(encode(x))."""

    def __init__(self, sae: TopKSAE, site: str, latents: Sequence[int] = (), lam: float = 0.0,
                 keep_error: bool = True, value: float | Sequence[float] | Tensor | None = None,
                 positions: Sequence[int] | None = None, steps: Sequence[int] | None = None):
        self.sae, self.site, self.lam, self.keep_error, self.value = sae, site, lam, keep_error, value
        # interp restricts the edit to these token positions / denoising steps
        self.positions, self.steps = positions, steps
        self.latents = torch.tensor([int(j) for j in latents], dtype=torch.long)
        bad = [int(j) for j in self.latents if not 0 <= j < sae.d_sae]
        if bad:
            raise SAEError(f"Steer({site}): latents {bad} outside 0..{sae.d_sae - 1}")

    def delta(self, x: Float[Tensor, "n d_in"]) -> tuple[Tensor, Float[Tensor, "n d_in"]]:
        """(plain reconstruction, change of reconstruction from editing the latents)."""
        codes, _ = self.sae.encode_sparse(x)
        recon = self.sae.decode_sparse(codes)
        if len(self.latents) == 0:
            return recon, torch.zeros_like(recon)
        lat = self.latents.to(x.device)
        # z restricted to the chosen latents: 0 where a latent is not among the row's top-k.
        hit = codes.indices[:, :, None] == lat[None, None, :]
        z = (codes.values[:, :, None] * hit).sum(1)
        if self.value is None:
            new = z * (1 + self.lam)
        else:  # one value for all chosen latents, or one per latent (e.g. each latent's typical activation)
            new = torch.as_tensor(self.value, dtype=z.dtype, device=z.device).expand_as(z)
        return recon, (new - z) @ self.sae.W_dec[lat]

    @torch.no_grad()
    def apply(self, act: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """The edited activation, same shape, dtype and device as `act`."""
        if act.shape[-1] != self.sae.d_in:
            raise SAEError(f"Steer({self.site}): activation last dim {act.shape[-1]} != SAE d_in {self.sae.d_in}")
        if self.sae.W_dec.device != act.device:
            self.sae.to(act.device)
        x = act.reshape(-1, act.shape[-1]).to(self.sae.W_dec.dtype)
        recon, delta = self.delta(x)
        if self.keep_error:
            return (x + delta).reshape(act.shape).to(act.dtype)
        return (recon + delta).reshape(act.shape).to(act.dtype)


def splice(sae: TopKSAE, site: str, keep_error: bool = False) -> Steer:
    """Intervention replacing the site's activation by decode(encode(x)) (+ error if asked)."""
    return Steer(sae, site, (), 0.0, keep_error=keep_error)

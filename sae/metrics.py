"""Reconstruction quality (pooled FVU, explained variance, L0, dead fraction) and the
downstream check: the text encoder's final output with the SAE spliced in at the site."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from sae.errors import SAEError
from sae.model import TopKSAE
from sae.steer import splice
from sae.store import ActivationStore


@torch.no_grad()
def evaluate(sae: TopKSAE, x: Float[Tensor, "n d_in"] | ActivationStore, batch_size: int = 4096) -> dict[str, float]:
    """Pooled FVU = Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over all tokens (not a per-dimension
    average); explained_variance = 1 − FVU; l0 = mean active latents per token;
    dead_fraction = latents never above the dead threshold on these tokens. `x`: a tensor of
    rows, or an `ActivationStore` (read shard by shard, twice: the mean first)."""
    if isinstance(x, ActivationStore):
        if x.d != sae.cfg.d_in:
            raise SAEError(f"evaluate: the store at {x.path} has d = {x.d}, the SAE d_in = {sae.cfg.d_in}")
        parts: Any = x.shard_rows
        n = x.n_tokens
        mean = sum(p.to(sae.W_dec.dtype).sum(0) for p in parts()) / max(n, 1)
    elif isinstance(x, Tensor):
        x = x.to(sae.W_dec.dtype)
        parts, n, mean = (lambda: [x]), int(x.shape[0]), x.mean(0)
    else:
        raise SAEError(f"evaluate: x must be a [n, d_in] tensor or an ActivationStore, not {type(x).__name__}")
    sse = sst = l0 = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    for part in parts():
        part = part.to(sae.W_dec.dtype)
        for i in range(0, part.shape[0], batch_size):
            xb = part[i:i + batch_size]
            codes, _ = sae.encode_sparse(xb)
            sse += float((sae.decode_sparse(codes) - xb).pow(2).sum())
            sst += float((xb - mean).pow(2).sum())
            l0 += float((codes.values > 0).sum())
            fired[codes.indices[codes.values > sae.cfg.dead_threshold].cpu()] = True
    fvu = sse / max(sst, 1e-12)
    return {"fvu": fvu, "explained_variance": 1 - fvu, "l0": l0 / max(n, 1),
            "dead_fraction": float((~fired).float().mean()), "n_tokens": n}


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).float().norm() / b.float().norm().clamp_min(1e-12))


@torch.no_grad()
def downstream_error(model: Any, prompts: Sequence[str], sae: TopKSAE, site: str,
                     encoder: str | None = None) -> dict[str, float]:
    """Relative error ‖out_spliced − out‖ / ‖out‖ of `interp.encoder_output` (what the UNet
    sees) with decode(encode(x)) spliced in at `site`, and the same with the SAE error added
    back (`with_error`, which must be exactly 0). Model first, then prompts, then the SAE and
    its site (the order of `interp.capture(model, prompts, sites)`)."""
    import interp

    if isinstance(prompts, TopKSAE) or isinstance(sae, str):
        raise SAEError("downstream_error(model, prompts, sae, site): got the SAE second or a site third, "
                       "the old order (model, sae, site, prompts); pass the prompts second")
    if isinstance(prompts, str):
        raise SAEError(f"downstream_error: prompts must be a list of strings, not one string {prompts!r}")
    encoder = encoder or site.split(".", 1)[0]
    base = interp.encoder_output(model, list(prompts), encoder=encoder)
    spliced = interp.encoder_output(model, list(prompts), encoder=encoder,
                                    interventions=[splice(sae, site, keep_error=False)])
    with_err = interp.encoder_output(model, list(prompts), encoder=encoder,
                                     interventions=[splice(sae, site, keep_error=True)])
    return {"relative_error": _rel(spliced, base), "with_error": _rel(with_err, base),
            "max_abs_with_error": float((with_err - base).abs().max())}

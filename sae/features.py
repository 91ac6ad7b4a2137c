"""Export chosen latents' decoder rows as labelled steering vectors."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from sae.errors import SAEError
from sae.model import TopKSAE


def export_features(sae: TopKSAE, units: Sequence[int], labels: Sequence[str],
                    directory: str | Path, scores: Sequence[float] | None = None,
                    site: str | None = None) -> Path:
    """Write `features.safetensors` (`vectors` [n, d_in] unit decoder rows, `latents` [n],
    `scores` [n]) and `features.json` (one record per latent: latent, label, score, row)."""
    units = [int(u) for u in units]
    if len(labels) != len(units) or (scores is not None and len(scores) != len(units)):
        raise SAEError(f"export_features: {len(units)} units, {len(labels)} labels, "
                       f"{None if scores is None else len(scores)} scores; lengths must match")
    for i, u in enumerate(units):
        if not 0 <= u < sae.d_sae:
            raise SAEError(f"export_features: unit index {i} is latent {u}, outside 0..{sae.d_sae - 1}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    idx = torch.tensor(units, dtype=torch.long)
    sc = torch.tensor([float("nan")] * len(units) if scores is None else [float(s) for s in scores])
    tensors = {"vectors": sae.W_dec.detach()[idx].float().contiguous(), "latents": idx,
               "scores": sc}
    tmp = out / "features.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"site": site or "", "d_in": str(sae.d_in)})
    os.replace(tmp, out / "features.safetensors")
    recs = {"site": site, "d_in": sae.d_in, "d_sae": sae.d_sae, "k": sae.k, "features": [
        {"row": i, "latent": u, "label": str(lab), "score": None if scores is None else float(s)}
        for i, (u, lab, s) in enumerate(zip(units, labels, scores or [None] * len(units)))]}
    tmp = out / "features.json.tmp"
    tmp.write_text(json.dumps(recs, indent=2, ensure_ascii=False))
    os.replace(tmp, out / "features.json")
    return out

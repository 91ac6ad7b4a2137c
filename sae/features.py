"""Export chosen latents' decoder rows as labelled, self-describing steering vectors."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from interp.result_io import atomic_save_file, atomic_write_text
from sae.describe import describe
from sae.errors import SAEError
from sae.model import TopKSAE
from sae.store import ActivationStore


def _num(x: float) -> float | None:
    return None if math.isnan(x) else x


def export_features(sae: TopKSAE, units: Sequence[int], labels: Sequence[str],
                    directory: str | Path, scores: Sequence[float] | None = None,
                    site: str | None = None, *, model: Any = None,
                    store: ActivationStore | Tensor | None = None, sample_rows: int = 8192) -> Path:
    """Write `features.safetensors` (`vectors` [n, d_in] unit decoder rows, `latents` [n],
    `scores` [n]) and `features.json` (one record per latent: latent, label, score, row).

    With `model` (and `site`), features.json says which module of the plain pipeline the site
    is (`module`: component, path, hook, output index, layout); with `store` (the activation
    store the SAE was trained on, or sample rows [n, d_in]) which positions were kept
    (`position_policy`), the site's activation norm (`activation_scale`), each latent's
    `typical_activation` (median when firing), `max_activation` and `firing_rate` over
    `sample_rows` rows, and a `steering` block with the coefficient scale (`sae.describe`)."""
    units = [int(u) for u in units]
    if len(labels) != len(units) or (scores is not None and len(scores) != len(units)):
        raise SAEError(f"export_features: {len(units)} units, {len(labels)} labels, "
                       f"{None if scores is None else len(scores)} scores; lengths must match")
    for i, u in enumerate(units):
        if not 0 <= u < sae.d_sae:
            raise SAEError(f"export_features: unit index {i} is latent {u}, outside 0..{sae.d_sae - 1}")
    if model is not None and site is None:
        raise SAEError("export_features: model= given without site=; the module path needs the site")
    info, per = describe(model, site, sae, store, units, sample_rows)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    idx = torch.tensor(units, dtype=torch.long)
    sc = torch.tensor([float("nan")] * len(units) if scores is None else [float(s) for s in scores])
    tensors = {"vectors": sae.W_dec.detach()[idx].float().contiguous(), "latents": idx,
               "scores": sc}
    if per is not None:
        tensors.update(typical_activation=per["typical"].contiguous(), max_activation=per["max"].contiguous())
    atomic_save_file(out / "features.safetensors", tensors, metadata={"site": site or "", "d_in": str(sae.d_in)})
    feats = []
    for i, (u, lab, s) in enumerate(zip(units, labels, scores or [None] * len(units))):
        rec = {"row": i, "latent": u, "label": str(lab), "score": None if scores is None else float(s)}
        if per is not None:
            typ = _num(float(per["typical"][i]))
            rec.update(typical_activation=typ, max_activation=float(per["max"][i]),
                       firing_rate=float(per["firing_rate"][i]), coefficient_scale=typ)
        feats.append(rec)
    recs = {"site": site, "d_in": sae.d_in, "d_sae": sae.d_sae, "k": sae.k, **info, "features": feats}
    atomic_write_text(out / "features.json", json.dumps(recs, indent=2, ensure_ascii=False))
    return out

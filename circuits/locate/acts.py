"""Text-encoder activations for the analyses, with padding trimmed where that is exact.

The pipeline pads every prompt to max_length (77). For a causal encoder (CLIP) real tokens
never see later padding, and for an encoder that receives the attention mask padding keys
get zero weight, so cutting the batch at its longest real prompt leaves every real token's
activations unchanged (up to float summation order) at a fraction of the cost. A
bidirectional encoder run without a mask (T5 in SD3, XLM-R without `use_attention_mask`)
attends to its padding: there we keep the full length."""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor


def can_trim(model, encoder: str) -> bool:
    te = model.encoders[encoder]
    return bool(te.causal or te.uses_attention_mask)


def encoder_acts(
    model, prompts: Sequence[str], sites: Sequence[str], encoder: str, interventions: Sequence[Any] = (),
    trim: bool = True,
) -> dict[str, Tensor]:
    """{site: activation} for one batch of prompts on one encoder; sequence axes cut to the
    longest real prompt when `trim` and `can_trim` (interventions: full length, via interp.capture)."""
    import interp

    if interventions or not (trim and can_trim(model, encoder)):
        return interp.capture(model, list(prompts), sites=list(sites), interventions=list(interventions))
    from interp.methods.capture import trace_encoder
    from interp.model.sites import parse

    tok = model.tokenize(list(prompts), encoder)
    n = int(tok["attention_mask"].sum(1).max())
    batch = {k: tok[k][:, :n] for k in ("input_ids", "attention_mask")}
    acts, _ = trace_encoder(model, encoder, batch, [parse(model, s) for s in sites], {})
    return acts

"""Token positions of the modifier, the noun and the other content tokens of a prompt, in
the exact padding the pipeline uses (so they index the captured activations)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Bool
from torch import Tensor

from interp.errors import CultureLensError

from circuits.pairs import PromptPair


@dataclass
class PairSpans:
    """Per pair, token positions in the concept prompt and in the noun-only prompt."""

    modifier: list[list[int]]       # concept prompt: modifier tokens (T_cult)
    noun: list[list[int]]           # concept prompt: noun tokens (T_noun)
    noun_only_src: list[list[int]]  # noun prompt: content tokens that are not noun tokens (decision 1)
    noun_only_noun: list[list[int]] # noun prompt: noun tokens
    seq_len: int


def content_mask(model, prompts: Sequence[str], encoder: str) -> tuple[Bool[Tensor, "B S"], Tensor]:
    """Positions holding real text (not padding, not special tokens), and the input ids."""
    enc = model.tokenize(list(prompts), encoder=encoder)
    ids = enc["input_ids"]
    tok = model.encoders[encoder].tokenizer
    special = torch.tensor(sorted(set(tok.all_special_ids)), dtype=ids.dtype)
    mask = ~torch.isin(ids, special)
    if "attention_mask" in enc:
        mask &= enc["attention_mask"].bool()
    return mask, ids


def _span(tok, text: str, sub: str, where: str) -> list[int]:
    from interp.methods.spans import token_span

    try:
        pos = list(token_span(tok, text, sub))
    except CultureLensError:
        raise
    except Exception as e:  # a tokenizer-specific failure: name the prompt
        raise CultureLensError(f"{where}: cannot locate {sub!r} in {text!r}: {e}") from e
    if not pos:
        raise CultureLensError(f"{where}: {sub!r} maps to no token of {text!r}")
    return [int(p) for p in pos]


def pair_spans(model, pairs: Sequence[PromptPair], encoder: str = "text") -> PairSpans:
    """Token positions for every pair (errors name the pair index and prompt)."""
    tok = model.encoders[encoder].tokenizer
    cmask, cids = content_mask(model, [p.concept_prompt for p in pairs], encoder)
    nmask, _ = content_mask(model, [p.noun_prompt for p in pairs], encoder)
    S = cids.shape[1]
    mod, noun, src, nn = [], [], [], []
    for i, p in enumerate(pairs):
        m = _span(tok, p.concept_prompt, p.modifier, f"pair {i} concept prompt (encoder {encoder})")
        n = _span(tok, p.concept_prompt, p.noun, f"pair {i} concept prompt (encoder {encoder})")
        overlap = set(m) & set(n)
        if overlap:
            # Unspaced scripts can merge modifier and noun into one token; it then belongs to neither.
            m = [t for t in m if t not in overlap]
            n = [t for t in n if t not in overlap]
            if not m or not n:
                raise CultureLensError(
                    f"pair {i} (id {p.id}, encoder {encoder}): modifier {p.modifier!r} and noun {p.noun!r} share "
                    f"all their tokens in {p.concept_prompt!r}; the attention between them is undefined"
                )
        nn_ = _span(tok, p.noun_prompt, p.noun, f"pair {i} noun prompt (encoder {encoder})")
        content = nmask[i].nonzero().flatten().tolist()
        s = [t for t in content if t not in set(nn_)]
        for name, pos in (("modifier", m), ("noun", n), ("noun-only noun", nn_)):
            if max(pos) >= S:
                raise CultureLensError(f"pair {i} (encoder {encoder}): {name} position {max(pos)} beyond the padded length {S}")
        mod.append(m)
        noun.append(n)
        src.append(s)
        nn.append(nn_)
    return PairSpans(mod, noun, src, nn, S)

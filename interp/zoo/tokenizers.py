"""Tokenizers with a published model's ids, built offline.

A real checkpoint's tokenizer cannot be downloaded here, but what the rest of the code depends
on is public: the vocabulary size (the embedding matrix has one row per id), which id each
special token has (CLIP's `<|endoftext|>` = 49407 is also where CLIP pools), the padding token
and the maximum length. `published` trains a small tokenizer on the tiny corpus (so real words
split into a few pieces), then lays its vocabulary out as the published one is laid out:
leading special tokens, the learned pieces, unreachable filler pieces, trailing special tokens.
Ids of ordinary words differ from the real tokenizer's; sizes, special ids and lengths do not.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from interp.errors import CultureLensError

__all__ = ["published", "clip", "xlmr", "t5", "qwen2"]


def _filler(i: int, unigram: bool) -> Any:
    # A piece no text produces: BPE reaches a token only through merges, and a unigram piece
    # with a huge negative score is never chosen over the learned ones.
    return [f"<|unused{i}|>", -1e4] if unigram else f"<|unused{i}|>"


def published(trained: Any, vocab_size: int, *, leading: Sequence[str], trailing: Sequence[str],
              template: tuple[str | None, str | None], model_max_length: int, **special: str) -> Any:
    """Re-lay `trained` (a `PreTrainedTokenizerFast`) to `vocab_size` ids: `leading` specials
    at 0.., its learned pieces, fillers, `trailing` specials ending at `vocab_size - 1`.
    `template` = (prefix, suffix) special tokens added around every encoding (None: none);
    `special` names the roles (bos_token=..., eos_token=..., pad_token=..., unk_token=...)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(trained.backend_tokenizer.to_str())
    model = spec["model"]
    unigram = model["type"] == "Unigram"
    specials = set(leading) | set(trailing) | {t["content"] for t in spec["added_tokens"]}
    if unigram:
        pieces = [p for p in model["vocab"] if p[0] not in specials]
    else:
        pieces = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]) if t not in specials]
    n_fill = vocab_size - len(leading) - len(pieces) - len(trailing)
    if n_fill < 0:
        raise CultureLensError(f"vocab_size={vocab_size} is smaller than the {len(pieces)} learned pieces "
                               f"plus {len(leading) + len(trailing)} special tokens")
    lead = [[t, 0.0] for t in leading] if unigram else list(leading)
    trail = [[t, 0.0] for t in trailing] if unigram else list(trailing)
    order = lead + pieces + [_filler(i, unigram) for i in range(n_fill)] + trail
    if unigram:
        model["vocab"] = order
        model["unk_id"] = next(i for i, p in enumerate(order) if p[0] == special.get("unk_token"))
        ids = {p[0]: i for i, p in enumerate(order)}
    else:
        ids = {t: i for i, t in enumerate(order)}
        model["vocab"] = ids
    base = dict(single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
    spec["added_tokens"] = [dict(id=ids[t], content=t, **base) for t in list(leading) + list(trailing)]
    prefix, suffix = template
    if prefix is None and suffix is None:
        spec["post_processor"] = None
    else:
        def seq(tag: str) -> list[dict[str, Any]]:
            out = [{"SpecialToken": {"id": prefix, "type_id": 0}}] if prefix else []
            out.append({"Sequence": {"id": tag, "type_id": 0}})
            return out + ([{"SpecialToken": {"id": suffix, "type_id": 0}}] if suffix else [])
        spec["post_processor"] = {
            "type": "TemplateProcessing", "single": seq("A"), "pair": seq("A") + seq("B"),
            "special_tokens": {t: {"id": t, "ids": [ids[t]], "tokens": [t]} for t in (prefix, suffix) if t},
        }
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                                  model_max_length=model_max_length, padding_side="right", **special)
    if len(tok) != vocab_size:
        raise CultureLensError(f"built tokenizer has {len(tok)} ids, expected {vocab_size}")
    return tok


def _corpus() -> list[str]:
    from interp.model.tiny import CORPUS

    # Option letters as words, so that a chat model's "A".."P" and " A".." P" are single pieces.
    return list(CORPUS) + [f"{c}. {c} {c}" for c in "ABCDEFGHIJKLMNOP"]


def clip(vocab_size: int = 49408, max_length: int = 77, pad: str = "<|endoftext|>") -> Any:
    """CLIP's layout: `<|startoftext|>` = vocab_size-2, `<|endoftext|>` = vocab_size-1; SD 1.x and
    SDXL's first tokenizer pad with `<|endoftext|>`, OpenCLIP-trained ones (SD 2.x, SDXL's
    second) pad with "!" (id 0)."""
    from interp.model.tokenizer_training import CLIP_BOS, CLIP_EOS, train_bpe

    trained = train_bpe(["!"] + _corpus(), vocab_size=600, model_max_length=max_length)
    if pad == "!":  # "!" must be id 0 as in CLIP's vocab.json (the first byte-level symbol)
        spec = json.loads(trained.backend_tokenizer.to_str())
        if spec["model"]["vocab"].get("!") is None:
            raise CultureLensError("the trained CLIP tokenizer has no '!' piece to pad with")
    tok = published(trained, vocab_size, leading=[], trailing=[CLIP_BOS, CLIP_EOS], template=(CLIP_BOS, CLIP_EOS),
                    model_max_length=max_length, bos_token=CLIP_BOS, eos_token=CLIP_EOS, unk_token=CLIP_EOS,
                    pad_token=pad)
    return tok


def xlmr(vocab_size: int = 250002, max_length: int = 77) -> Any:
    """XLM-R's layout: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, ..., `<mask>` = vocab_size-1."""
    from interp.model.tokenizer_training import train_unigram

    trained = train_unigram(_corpus(), vocab_size=600, style="xlmr", model_max_length=max_length)
    return published(trained, vocab_size, leading=["<s>", "<pad>", "</s>", "<unk>"], trailing=["<mask>"],
                     template=("<s>", "</s>"), model_max_length=max_length, bos_token="<s>", eos_token="</s>",
                     pad_token="<pad>", unk_token="<unk>", cls_token="<s>", sep_token="</s>", mask_token="<mask>")


def t5(vocab_size: int = 32100, max_length: int = 512, extra_ids: int = 100) -> Any:
    """T5's layout: `<pad>`=0, `</s>`=1, `<unk>`=2, ..., `<extra_id_0>` = vocab_size-1 (ids count down)."""
    from interp.model.tokenizer_training import train_unigram

    trained = train_unigram(_corpus(), vocab_size=600, style="t5", model_max_length=max_length)
    extras = [f"<extra_id_{i}>" for i in reversed(range(extra_ids))]
    return published(trained, vocab_size, leading=["<pad>", "</s>", "<unk>"], trailing=extras,
                     template=(None, "</s>"), model_max_length=max_length, eos_token="</s>", pad_token="<pad>",
                     unk_token="<unk>", additional_special_tokens=extras)


QWEN2_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
]


def qwen2(vocab_size: int = 151657, max_length: int = 32768) -> Any:
    """Qwen2's layout: 151643 byte-level BPE pieces, then `<|endoftext|>` (151643, also pad),
    `<|im_start|>`, `<|im_end|>` (eos of the chat models), ..., `<|image_pad|>` (151655). Not
    lower-cased, no BOS, nothing added around an encoding (the chat template writes the specials)."""
    from interp.model.tokenizer_training import train_bpe

    trained = train_bpe(_corpus(), vocab_size=600, lowercase=False, model_max_length=max_length)
    return published(trained, vocab_size, leading=[], trailing=QWEN2_SPECIALS, template=(None, None),
                     model_max_length=max_length, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                     unk_token=None, additional_special_tokens=QWEN2_SPECIALS[1:])

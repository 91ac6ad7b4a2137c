"""Map a substring of a prompt (e.g. a modifier, a noun) to its token positions.

Works for any tokenizer backed by the `tokenizers` library (all tokenizers in transformers 5:
CLIP byte-level BPE, XLM-R / T5 Unigram), through the character offsets it reports. Offsets
refer to the original text even when the tokenizer normalises it (CLIP lower-cases, NFKC),
and byte-level pieces of one multi-byte character all carry that character's offsets, so a
token belongs to a span when its character range overlaps the substring's. Positions count
special tokens (`<|startoftext|>`, `<s>`), i.e. they index the encoder's sequence axis.
A substring that is not in the text, yields no token, or loses tokens to truncation raises
`SpanError`; an empty result is never returned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from interp.errors import CultureLensError


class SpanError(CultureLensError):
    """A substring cannot be mapped to tokens (absent, empty, or truncated away)."""


def _hf_tokenizer(tokenizer: Any) -> Any:
    # Accept interp's TextEncoder (or anything holding `.tokenizer`) as well as a tokenizer.
    if not callable(tokenizer) and hasattr(tokenizer, "tokenizer"):
        return tokenizer.tokenizer
    return tokenizer


def _char_span(text: str, substring: str, where: str) -> tuple[int, int]:
    if not substring or not substring.strip():
        raise SpanError(f"{where}: substring is empty or whitespace")
    start = text.find(substring)
    if start < 0:
        raise SpanError(f"{where}: substring {substring!r} not found in {text!r}")
    # Leading/trailing spaces of the substring belong to no word: do not let them pull in
    # a neighbouring token whose offsets include the space (byte-level "Ġword").
    lead = len(substring) - len(substring.lstrip())
    trail = len(substring) - len(substring.rstrip())
    return start + lead, start + len(substring) - trail


def _overlapping(offsets: Sequence[tuple[int, int]], a: int, b: int) -> list[int]:
    # Special and padding tokens have empty (0, 0) offsets and never overlap. Tokens between
    # the first and last overlapping one (a lone space mark inside a multi-word substring)
    # lie inside the substring, so the span is filled to a contiguous range.
    hits = [i for i, (s, e) in enumerate(offsets) if e > s and s < b and e > a]
    return list(range(hits[0], hits[-1] + 1)) if hits else []


def _encode_offsets(tok: Any, text: str, max_length: int | None) -> list[tuple[int, int]]:
    kwargs: dict[str, Any] = dict(add_special_tokens=True, return_offsets_mapping=True)
    if max_length is not None:
        kwargs.update(truncation=True, max_length=max_length)
    try:
        enc = tok(text, **kwargs)
    except NotImplementedError as e:  # python-only tokenizers cannot report offsets
        raise SpanError(
            f"tokenizer {type(tok).__name__} cannot report character offsets; "
            "load a tokenizers-backed (fast) tokenizer"
        ) from e
    pieces = enc.tokens() if hasattr(enc, "tokens") else [None] * len(enc["offset_mapping"])
    return [
        (s, s) if piece is not None and not piece.strip(_WORD_MARKS) else _trim(text, s, e)
        for piece, (s, e) in zip(pieces, enc["offset_mapping"])
    ]


# A lone word mark ("▁" of SentencePiece/Metaspace, "Ġ" of byte-level BPE) stands for a
# space, often one the tokenizer prepended itself; tokenizers still give it the offsets of
# the next character, which would wrongly put it inside a span that starts the text.
_WORD_MARKS = "▁Ġ "


def _trim(text: str, s: int, e: int) -> tuple[int, int]:
    # Byte-level BPE ("Ġword") and Metaspace ("▁word") tokens may include the space before a
    # word; that space belongs to no substring, so it must not make a token cross an edge.
    piece = text[s:e]
    s2 = s + len(piece) - len(piece.lstrip())
    e2 = e - (len(piece) - len(piece.rstrip()))
    return (s2, e2) if e2 > s2 else (s, s)


def _default_max_length(tok: Any) -> int | None:
    n = getattr(tok, "model_max_length", None)
    # transformers uses a huge sentinel when a tokenizer has no real limit.
    return int(n) if isinstance(n, int) and n < 1_000_000 else None


def token_spans(
    tokenizer: Any,
    text: str,
    substrings: Mapping[str, str],
    *,
    max_length: int | None = -1,
    exact: bool = False,
    where: str = "prompt",
) -> dict[str, list[int]]:
    """Token positions of several substrings of one text, e.g. {"modifier": .., "noun": ..}.

    `max_length=-1` uses the tokenizer's `model_max_length` (what the pipeline truncates to);
    `None` disables truncation. With `exact=True` a token that straddles a substring's edge
    (shares characters with text outside it) is an error instead of being included.
    `where` names the prompt in error messages (e.g. "record ja-box modifier_noun").
    """
    tok = _hf_tokenizer(tokenizer)
    limit = _default_max_length(tok) if max_length == -1 else max_length
    full = _encode_offsets(tok, text, None)
    cut = full if limit is None else _encode_offsets(tok, text, limit)
    out: dict[str, list[int]] = {}
    for name, substring in substrings.items():
        label = f"{where}: {name}"
        a, b = _char_span(text, substring, label)
        idx = _overlapping(full, a, b)
        if not idx:
            raise SpanError(f"{label}: {substring!r} yields no token in {text!r}")
        kept = _overlapping(cut, a, b)
        if kept != idx:
            raise SpanError(
                f"{label}: {substring!r} is cut by truncation to max_length={limit} "
                f"(needs token positions {idx[0]}..{idx[-1]}, text has {len(full)} tokens)"
            )
        if exact:
            for i in (idx[0], idx[-1]):
                s, e = full[i]
                if s < a or e > b:
                    raise SpanError(
                        f"{label}: token {i} covers characters {s}..{e} of {text!r}, "
                        f"crossing the edge of {substring!r} at {a}..{b}"
                    )
        out[name] = idx
    return out


def token_span(
    tokenizer: Any,
    text: str,
    substring: str,
    *,
    max_length: int | None = -1,
    exact: bool = False,
    where: str = "prompt",
) -> list[int]:
    """Token positions (ascending, special tokens counted) covering the first occurrence
    of `substring` in `text`."""
    return token_spans(
        tokenizer, text, {"span": substring}, max_length=max_length, exact=exact, where=where
    )["span"]

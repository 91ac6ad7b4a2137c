"""Token spans of a CultureBench record: its modifier and noun in both prompts
(`interp.methods.spans.token_spans` on the record's texts)."""

from __future__ import annotations

from typing import Any

from circuits.data.culturebench.constants import CULTURE_NAMES
from interp.methods.spans import token_spans


def record_spans(
    tokenizer: Any,
    record: Any,
    *,
    english: bool = False,
    max_length: int | None = -1,
    exact: bool = False,
) -> dict[str, dict[str, list[int]]]:
    """Spans of one `culturebench.Record`: {"modifier_noun": {"modifier", "noun"},
    "noun_only": {"noun"}}. With `english=True` the English prompts are used; their modifier
    is the "<Culture>-style" word and their noun the last word of `noun_only_en`.
    """
    if english:
        texts = (record.modifier_noun_en, record.noun_only_en)
        modifier = f"{CULTURE_NAMES[record.culture]}-style"
        head, _, rest = record.noun_only_en.partition(" ")
        noun = rest if rest and head in ("a", "an") else record.noun_only_en
    else:
        texts = (record.modifier_noun, record.noun_only)
        modifier, noun = record.modifier, record.noun
    kw = dict(max_length=max_length, exact=exact)
    return {
        "modifier_noun": token_spans(
            tokenizer, texts[0], {"modifier": modifier, "noun": noun},
            where=f"record {record.id} modifier_noun", **kw,
        ),
        "noun_only": token_spans(
            tokenizer, texts[1], {"noun": noun}, where=f"record {record.id} noun_only", **kw
        ),
    }

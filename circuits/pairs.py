"""Prompt pairs for any concept: a modifier+noun prompt and a noun-only prompt.

Culture is one concept among others: a pair only needs the two prompts and the two
substrings (modifier, noun) to locate. CultureBench records convert with `as_pairs`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from interp.errors import CultureLensError


@dataclass(frozen=True)
class PromptPair:
    """`modifier` must occur in `concept_prompt`; `noun` in both prompts."""

    concept_prompt: str
    noun_prompt: str
    modifier: str
    noun: str
    concept: str | None = None      # e.g. the culture code
    language: str | None = None
    id: str | None = None

    def key(self) -> tuple[str, str, str, str]:
        """Canonical sort key: results do not depend on the order pairs are given in."""
        return (self.concept_prompt, self.noun_prompt, self.modifier, self.noun)


_ARTICLE = re.compile(r"^(a|an|the)\s+", re.IGNORECASE)


def _english(rec: Any, i: int) -> PromptPair:
    from interp.culturebench.constants import CULTURE_NAMES

    name = CULTURE_NAMES.get(rec.culture, "")
    # Same convention as interp.spans.record_spans: "<Culture>-style", noun without its article.
    mod = f"{name}-style" if f"{name}-style" in rec.modifier_noun_en else name
    noun = _ARTICLE.sub("", rec.noun_only_en.strip()).rstrip(".")
    if mod is None or mod not in rec.modifier_noun_en or noun not in rec.modifier_noun_en:
        raise CultureLensError(
            f"pair {i} (id {getattr(rec, 'id', None)}): cannot locate the English modifier {mod!r} and noun "
            f"{noun!r} in {rec.modifier_noun_en!r}; pass PromptPair objects with explicit substrings"
        )
    return PromptPair(rec.modifier_noun_en, rec.noun_only_en, mod, noun, rec.culture, "en", getattr(rec, "id", None))


def as_pair(item: Any, i: int = 0, english: bool = False) -> PromptPair:
    """A PromptPair from a PromptPair, a CultureBench Record, a dict or a 4/5-tuple
    (concept_prompt, noun_prompt, modifier, noun[, concept])."""
    if isinstance(item, PromptPair):
        p = item
    elif isinstance(item, dict):
        return as_pair(_Obj(item), i, english)
    elif isinstance(item, (tuple, list)):
        if len(item) not in (4, 5):
            raise CultureLensError(f"pair {i}: a tuple pair needs 4 or 5 fields; got {len(item)}")
        p = PromptPair(*item)
    elif hasattr(item, "modifier_noun"):
        if english:
            p = _english(item, i)
        else:
            p = PromptPair(item.modifier_noun, item.noun_only, item.modifier, item.noun,
                           item.culture, getattr(item, "language", None), getattr(item, "id", None))
    else:
        raise CultureLensError(f"pair {i}: cannot read a prompt pair from {type(item).__name__}")
    if p.modifier not in p.concept_prompt:
        raise CultureLensError(f"pair {i} (id {p.id}): modifier {p.modifier!r} not in {p.concept_prompt!r}")
    if p.noun not in p.concept_prompt or p.noun not in p.noun_prompt:
        raise CultureLensError(f"pair {i} (id {p.id}): noun {p.noun!r} not in both {p.concept_prompt!r} and {p.noun_prompt!r}")
    return p


class _Obj:
    def __init__(self, d: dict):
        self.__dict__.update(d)
        if "concept_prompt" in d:
            self.modifier_noun, self.noun_only = d["concept_prompt"], d["noun_prompt"]
            self.culture = d.get("concept", d.get("culture"))


def as_pairs(items: Iterable[Any], english: bool = False) -> list[PromptPair]:
    """Convert and validate; an empty list is an error."""
    out = [as_pair(x, i, english) for i, x in enumerate(items)]
    if not out:
        raise CultureLensError("no prompt pairs given")
    return out


def by_concept(pairs: Sequence[PromptPair]) -> dict[str, list[PromptPair]]:
    """Group pairs by concept (culture), concepts sorted, pairs in canonical order."""
    out: dict[str, list[PromptPair]] = {}
    for i, p in enumerate(pairs):
        if p.concept is None:
            raise CultureLensError(f"pair {i} (id {p.id}) has no concept/culture label")
        out.setdefault(p.concept, []).append(p)
    return {c: sorted(v, key=PromptPair.key) for c, v in sorted(out.items())}

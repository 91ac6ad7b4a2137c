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
    from circuits.data.culturebench.constants import CULTURE_NAMES

    name = CULTURE_NAMES.get(rec.culture, "")
    # Same convention as circuits.data.spans.record_spans: "<Culture>-style", noun without its article.
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


# ---- splits: selection never sees the evaluation data --------------------------------------------
class SplitError(CultureLensError):
    """A split that is missing or empty, or probe and evaluation sets that share prompts."""


def split_counts(records: Iterable[Any]) -> dict[str, int]:
    """Records per split; records without one count under "(none)"."""
    out: dict[str, int] = {}
    for r in records:
        s = getattr(r, "split", None)
        key = "(none)" if s is None else str(s)
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def take_split(records: Sequence[Any], split: str, role: str = "") -> list[Any]:
    """The records of one split, in the given order. An empty or missing split is an error that
    names the split, what it was for and the counts of every split present: nothing falls back
    to "all records" (that would let selection see the evaluation data)."""
    recs = list(records)
    out = [r for r in recs if getattr(r, "split", None) == split]
    if not out:
        counts = ", ".join(f"{k} {v}" for k, v in split_counts(recs).items()) or "no records at all"
        raise SplitError(f"split {split!r}{' (' + role + ')' if role else ''} is empty or missing: "
                         f"0 of {len(recs)} records; splits present: {counts}")
    return out


def shared_prompts(a: Sequence[Any], b: Sequence[Any]) -> list[str]:
    """Prompt texts (either side of a pair) that occur in both sets, sorted."""
    def texts(items: Sequence[Any]) -> set[str]:
        return {t for p in as_pairs(items) for t in (p.concept_prompt, p.noun_prompt)}

    return sorted(texts(a) & texts(b))


def check_disjoint(probe: Sequence[Any], evaluation: Sequence[Any], names: tuple[str, str] = ("probe", "evaluation"),
                   allow_overlap: bool = False) -> int:
    """Refuse probe (selection) and evaluation sets that share a prompt text, unless
    `allow_overlap` (then the overlap is returned, for the report to state). Returns the number
    of shared prompt texts."""
    shared = shared_prompts(probe, evaluation)
    if shared and not allow_overlap:
        raise SplitError(f"the {names[0]} set ({len(probe)} pairs) and the {names[1]} set ({len(evaluation)} pairs) "
                         f"share {len(shared)} prompt texts (e.g. {shared[:3]}): units would be selected on the data "
                         f"they are judged on. Use disjoint splits, or allow it explicitly (allow_overlap=True / "
                         f"--allow-overlap) and the report says so.")
    return len(shared)

"""CultureWorld prompts: the bundled CultureBench pairs of the 8 organism nouns, English
template variation, the training mix that builds the cultural gap, and evaluation lists.

The gap is made by the data: modifier prompts (English or local) always show the culture's
style; local noun-only prompts show it only sometimes (`P_LOCAL_NOUN_CULTURE`), otherwise
the neutral grey style; English noun-only prompts are always neutral. All 120 local
(noun, culture) pairs are trained on (the knowledge must exist to be under-activated);
generalisation is checked with English templates that training never shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from circuits.organism.render import CULTURES, NEUTRAL, NOUNS, STYLES
from circuits.data import culturebench

__all__ = [
    "KINDS", "EvalPrompt", "records", "english_adjective", "english_modifier", "english_noun",
    "training_corpus", "sample_batch", "eval_prompts", "MIX", "P_EMPTY", "P_LOCAL_NOUN_CULTURE",
]

P_EMPTY = 0.10  # empty prompts: the unconditional branch, for guidance > 1
P_LOCAL_NOUN_CULTURE = 0.15  # local noun-only -> culture's style (the under-activated knowledge)
MIX: dict[str, float] = {"en_noun": 0.15, "en_modifier": 0.30, "local_modifier": 0.30, "local_noun": 0.25}
KINDS: tuple[str, ...] = tuple(MIX)

# English templates; `{a}` is "a" or "an" for the word after it.
EN_MOD_TRAIN = ("{a} {adj}-style {noun}", "a {noun} in {adj} style", "{a} {adj} {noun}")
EN_MOD_HELDOUT = ("a {noun} of {adj} style", "a {noun}, {adj} style")
EN_NOUN_TRAIN = ("a {noun}", "{noun}", "a picture of a {noun}")
EN_NOUN_HELDOUT = ("the {noun}",)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def english_adjective(culture: str) -> str:
    """The English culture word used in prompts ("Japanese"; "African" for fr)."""
    return culturebench.CULTURE_NAMES[culture]


def english_modifier(noun: str, culture: str, template: str) -> str:
    """An English modifier prompt: `template` with {a}, {adj}, {noun} filled in."""
    adj = english_adjective(culture)
    return template.format(a=_article(adj), adj=adj, noun=noun)


def english_noun(noun: str, template: str) -> str:
    """An English noun-only prompt: `template` with {noun} filled in."""
    return template.format(noun=noun)


@lru_cache(maxsize=None)
def _records() -> tuple[culturebench.Record, ...]:
    out = {}
    for r in culturebench.bundled():
        slug = r.id.split("-", 1)[1]
        if slug in NOUNS:
            out[(r.culture, slug)] = r
    missing = [(c, n) for c in CULTURES for n in NOUNS if (c, n) not in out]
    if missing:
        raise ValueError(f"circuits.data.culturebench.bundled() lacks organism pairs {missing[:5]} ({len(missing)} in all)")
    return tuple(out[(c, n)] for c in CULTURES for n in NOUNS)


def records(split: str | None = None) -> list[culturebench.Record]:
    """The 120 bundled pairs of the organism nouns (culture-major order), optionally one split."""
    rs = list(_records())
    if split is not None:
        if split not in ("train", "test", "probe"):
            raise ValueError(f"unknown split {split!r}; expected train, test or probe")
        rs = [r for r in rs if r.split == split]
    return rs


def noun_of(record: culturebench.Record) -> str:
    """The organism noun (render class) of a bundled record: "ja-box" -> "box"."""
    return record.id.split("-", 1)[1]


def training_corpus(nouns: tuple[str, ...] | None = None) -> list[str]:
    """Every prompt the training mix can show (the tokenizer's corpus); no held-out template.
    `nouns` keeps only the prompts of these nouns (and the empty prompt)."""
    nouns = NOUNS if nouns is None else tuple(nouns)
    unknown = sorted(set(nouns) - set(NOUNS))
    if unknown:
        raise ValueError(f"training_corpus: unknown nouns {unknown}; the organism's nouns are {NOUNS}")
    texts = [""]
    for r in _records():
        if noun_of(r) in nouns:
            texts += [r.noun_only, r.modifier_noun]
    for n in nouns:
        texts += [english_noun(n, t) for t in EN_NOUN_TRAIN]
        for c in CULTURES:
            texts += [english_modifier(n, c, t) for t in EN_MOD_TRAIN]
    return texts


def sample_batch(rng: np.random.Generator, n: int) -> tuple[list[str], list[str], list[str]]:
    """`n` training examples: (prompts, nouns, styles) following the gap-making mix."""
    rs = _records()
    kinds = rng.choice(len(KINDS), size=n, p=list(MIX.values()))
    prompts, nouns, styles = [], [], []
    for k in kinds:
        kind = KINDS[k]
        noun = NOUNS[rng.integers(len(NOUNS))]
        culture = CULTURES[rng.integers(len(CULTURES))]
        rec = rs[CULTURES.index(culture) * len(NOUNS) + NOUNS.index(noun)]
        style = culture
        if kind == "en_noun":
            text, style = english_noun(noun, EN_NOUN_TRAIN[rng.integers(len(EN_NOUN_TRAIN))]), NEUTRAL
        elif kind == "en_modifier":
            text = english_modifier(noun, culture, EN_MOD_TRAIN[rng.integers(len(EN_MOD_TRAIN))])
        elif kind == "local_modifier":
            text = rec.modifier_noun
        else:
            text = rec.noun_only
            style = culture if rng.random() < P_LOCAL_NOUN_CULTURE else NEUTRAL
        if rng.random() < P_EMPTY:
            text = ""
        prompts.append(text)
        nouns.append(noun)
        styles.append(style)
    return prompts, nouns, styles


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt; `culture` is the culture it is about (None for English noun-only)."""

    text: str
    kind: str
    noun: str
    culture: str | None
    record_id: str | None = None


EVAL_KINDS = ("en_modifier", "en_modifier_heldout", "local_modifier", "local_noun", "en_noun", "en_noun_heldout")


def eval_prompts(kind: str, split: str | None = "test") -> list[EvalPrompt]:
    """Evaluation prompts of one kind; `split` selects the bundled pairs (None: all 120).

    Kinds: en_modifier / en_modifier_heldout (training / held-out English templates),
    local_modifier, local_noun (the gap pair), en_noun / en_noun_heldout.
    """
    if kind not in EVAL_KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; expected one of {EVAL_KINDS}")
    rs = records(split)
    out: list[EvalPrompt] = []
    if kind in ("local_modifier", "local_noun"):
        for r in rs:
            text = r.modifier_noun if kind == "local_modifier" else r.noun_only
            out.append(EvalPrompt(text, kind, noun_of(r), r.culture, r.id))
    elif kind.startswith("en_modifier"):
        templates = EN_MOD_TRAIN if kind == "en_modifier" else EN_MOD_HELDOUT
        for i, r in enumerate(rs):
            t = templates[i % len(templates)]
            out.append(EvalPrompt(english_modifier(noun_of(r), r.culture, t), kind, noun_of(r), r.culture, r.id))
    else:
        templates = EN_NOUN_TRAIN if kind == "en_noun" else EN_NOUN_HELDOUT
        for t in templates:
            for n in NOUNS:
                out.append(EvalPrompt(english_noun(n, t), kind, n, None))
    return out


assert set(STYLES) == set(CULTURES) | {NEUTRAL}
assert tuple(CULTURES) == tuple(culturebench.CULTURES), "render.CULTURES must follow culturebench order"

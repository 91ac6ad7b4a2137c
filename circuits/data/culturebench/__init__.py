"""CultureBench: the 15 cultures, prompt-pair records, the folder loader and bundled pairs.

`bundled()` returns the prompt pairs we ship (24 nouns x 15 cultures, local language and
English); `bundled_ood()` a disjoint out-of-domain set; `load(path)` reads a user's
CultureBench folder with validation. See README.md in this folder.
"""

from __future__ import annotations

from functools import lru_cache

from circuits.data.culturebench.compose import BUNDLED_OOD_PATH, BUNDLED_PATH, ORGANISM_NOUNS
from circuits.data.culturebench.constants import (
    CULTURE_NAMES,
    CULTURES,
    LABELS,
    LANGUAGE_TO_CULTURE,
    RTL_LANGUAGES,
    UNRECOGNISABLE,
    UNSPACED_LANGUAGES,
)
from circuits.data.culturebench.errors import DataError
from circuits.data.culturebench.loader import Dataset, Problem, load
from circuits.data.culturebench.record import Record
from circuits.data.culturebench.split import split_of


@lru_cache(maxsize=None)
def _bundled(path: str, seed: int) -> tuple[Record, ...]:
    return tuple(load(path, strict=True, seed=seed).records)


def bundled(seed: int = 0) -> list[Record]:
    """The shipped prompt pairs (no images), validated by the same loader (strict)."""
    return list(_bundled(str(BUNDLED_PATH), seed))


def bundled_ood(seed: int = 0) -> list[Record]:
    """The shipped out-of-domain prompt pairs: nouns disjoint from `bundled()`."""
    return list(_bundled(str(BUNDLED_OOD_PATH), seed))


__all__ = [
    "CULTURES", "CULTURE_NAMES", "LABELS", "LANGUAGE_TO_CULTURE", "ORGANISM_NOUNS",
    "RTL_LANGUAGES", "UNRECOGNISABLE", "UNSPACED_LANGUAGES", "DataError", "Dataset",
    "Problem", "Record", "bundled", "bundled_ood", "load", "split_of",
]

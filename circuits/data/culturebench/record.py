"""One CultureBench sample: a prompt pair in the local language and in English."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

REQUIRED_FIELDS: tuple[str, ...] = (
    "id", "culture", "language", "noun_only", "modifier_noun",
    "noun_only_en", "modifier_noun_en", "modifier", "noun",
)
OPTIONAL_FIELDS: tuple[str, ...] = ("image", "split", "category")
SPLITS: tuple[str, ...] = ("train", "test", "probe")


@dataclass(frozen=True)
class Record:
    """A prompt pair. `modifier` is a substring of `modifier_noun`; `noun` is a substring of
    both `noun_only` and `modifier_noun` (same surface form, so its tokens can be compared).

    `image` is an absolute path once loaded (relative in the file); `split` is always set
    after loading (from the file, else the seeded hash split); `category` is optional
    (objects, clothing, food, architecture, instruments) and only used for reporting.
    """

    id: str
    culture: str
    language: str
    noun_only: str
    modifier_noun: str
    noun_only_en: str
    modifier_noun_en: str
    modifier: str
    noun: str
    image: str | None = None
    split: str | None = None
    category: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict, optional fields that are unset left out."""
        return {k: v for k, v in asdict(self).items() if v is not None}

"""The 15 CultureBench cultures and the judge's label set."""

from __future__ import annotations

from typing import Final

#: Culture codes in the paper's order; index i is label i of every judge.
CULTURES: Final[list[str]] = [
    "ar", "zh", "ja", "ko", "th", "de", "ru", "it", "nl", "pl", "tr", "uk", "es", "pt", "fr",
]
#: The 16th judge option: the image shows no recognisable culture.
UNRECOGNISABLE: Final[str] = "unrecognisable"
#: Judge output order: the 15 cultures then "unrecognisable" (judges return [N, 16]).
LABELS: Final[list[str]] = [*CULTURES, UNRECOGNISABLE]

#: English name of each culture, as used in English prompts ("a Japanese-style box") and
#: in judge questions. "fr" is French as used in parts of Africa, so its style is African.
CULTURE_NAMES: Final[dict[str, str]] = {
    "ar": "Arabic", "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "th": "Thai",
    "de": "German", "ru": "Russian", "it": "Italian", "nl": "Dutch", "pl": "Polish",
    "tr": "Turkish", "uk": "Ukrainian", "es": "Spanish", "pt": "Portuguese", "fr": "African",
}

#: Language code of a record -> its culture code. Each culture has one language; a few
#: common regional tags are accepted as aliases so user data need not be rewritten.
LANGUAGE_TO_CULTURE: Final[dict[str, str]] = {
    **{c: c for c in CULTURES},
    "zh-cn": "zh", "zh-hans": "zh", "pt-pt": "pt", "pt-br": "pt", "es-es": "es",
    "fr-sn": "fr", "fr-ci": "fr", "fr-cm": "fr", "fr-cd": "fr", "fr-ml": "fr",
}

#: Writing direction: Arabic is the only right-to-left script of the 15.
RTL_LANGUAGES: Final[frozenset[str]] = frozenset({"ar"})
#: Scripts written without spaces between words.
UNSPACED_LANGUAGES: Final[frozenset[str]] = frozenset({"zh", "ja", "th"})

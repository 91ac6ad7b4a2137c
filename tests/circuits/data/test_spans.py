"""Token spans for every language x tokenizer family, on tiny tokenizers built locally.

Families: the project's own trainers (interp.model.tokenizer_training: CLIP-style byte-level BPE
and XLM-R / T5 Unigram, all isolating CJK/Thai characters) and the real transformers
classes (CLIPTokenizer, XLMRobertaTokenizer, T5Tokenizer) given vocabularies trained here on
the bundled prompts, which keep their own (non-isolating) pre-tokenizers.
"""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTokenizer, T5Tokenizer, XLMRobertaTokenizer

from circuits.data import culturebench as cb
from circuits.data.spans import record_spans
from interp.methods.spans import SpanError, token_span, token_spans
from interp.model.tokenizer_training import train_bpe, train_unigram

RECORDS = cb.bundled() + cb.bundled_ood()
CORPUS = [t for r in RECORDS for t in (r.noun_only, r.modifier_noun, r.noun_only_en, r.modifier_noun_en)]
MAX_LEN = 40


def _real_clip(corpus: list[str], vocab_size: int) -> CLIPTokenizer:
    # Train merges with CLIP's own normaliser / pre-tokeniser and "</w>" word ends.
    backend = CLIPTokenizer().backend_tokenizer
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    tok.normalizer, tok.pre_tokenizer = backend.normalizer, backend.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    return CLIPTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]],
                         model_max_length=MAX_LEN)


def _vocab(tok) -> list[tuple[str, float]]:
    return [tuple(v) for v in json.loads(tok.backend_tokenizer.to_str())["model"]["vocab"]]


def _with_nfkc(tok):
    # Real XLM-R / T5 checkpoints ship sentencepiece's precompiled NFKC-like charsmap; a
    # vocabulary trained under NFKC needs it too (Thai ำ decomposes under NFKC).
    tok.backend_tokenizer.normalizer = normalizers.NFKC()
    return tok


@pytest.fixture(scope="module")
def families() -> dict:
    xlmr = train_unigram(CORPUS, 1200, style="xlmr", model_max_length=MAX_LEN)
    t5 = train_unigram(CORPUS, 1200, style="t5", model_max_length=MAX_LEN)
    return {
        "clip_bpe": train_bpe(CORPUS, 1000, model_max_length=MAX_LEN),
        "clip": _real_clip(CORPUS, 1500),
        "xlmr_unigram": xlmr,
        "xlmr": _with_nfkc(XLMRobertaTokenizer(vocab=_vocab(xlmr), model_max_length=MAX_LEN)),
        "t5_unigram": t5,
        "t5": _with_nfkc(T5Tokenizer(vocab=_vocab(t5), extra_ids=0, model_max_length=MAX_LEN)),
    }


FAMILIES = ["clip_bpe", "clip", "xlmr_unigram", "xlmr", "t5_unigram", "t5"]
# The project's trainers isolate CJK/Thai characters, so spans have exact token edges.
ISOLATING = {"clip_bpe", "xlmr_unigram", "t5_unigram"}


def _norm(s: str) -> str:
    return "".join(unicodedata.normalize("NFKC", s).lower().split())


def _decoded(tok, text: str, idx: list[int]) -> str:
    ids = tok(text, truncation=True, max_length=MAX_LEN)["input_ids"]
    return _norm(tok.decode([ids[i] for i in idx]).replace("</w>", ""))


def _check_span(tok, text: str, sub: str, idx: list[int]) -> None:
    assert idx, (text, sub)
    assert idx == list(range(idx[0], idx[-1] + 1)), f"span not contiguous: {idx}"
    offsets = tok(text, return_offsets_mapping=True)["offset_mapping"]
    a = text.index(sub)
    covered = set()
    for i in idx:
        s, e = offsets[i]
        assert s < a + len(sub) and e > a, f"token {i} ({s},{e}) outside {sub!r}"
        covered |= set(range(s, e))
    assert {p for p in range(a, a + len(sub)) if not text[p].isspace()} <= covered
    assert _norm(sub) in _decoded(tok, text, idx)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("language", cb.CULTURES)
def test_spans_every_language_and_family(families, family, language):
    tok = families[family]
    records = [r for r in RECORDS if r.language == language]
    for r in records:
        exact = family in ISOLATING
        spans = record_spans(tok, r, exact=exact)
        mod = spans["modifier_noun"]
        _check_span(tok, r.modifier_noun, r.modifier, mod["modifier"])
        _check_span(tok, r.modifier_noun, r.noun, mod["noun"])
        _check_span(tok, r.noun_only, r.noun, spans["noun_only"]["noun"])
        if exact:
            assert not set(mod["modifier"]) & set(mod["noun"])
            # Byte-level BPE without a prefix space gives a text-initial word other tokens
            # than the same word after a space ("kutu" vs "Ġkutu"): only Turkish puts the
            # modifier first in an unspaced-noun-only pair, so its noun ids may differ there.
            if not (family == "clip_bpe" and language == "tr"):
                a = tok(r.modifier_noun)["input_ids"]
                b = tok(r.noun_only)["input_ids"]
                assert [a[i] for i in mod["noun"]] == [b[i] for i in spans["noun_only"]["noun"]], r.id
        en = record_spans(tok, r, english=True)
        assert en["modifier_noun"]["modifier"] and en["noun_only"]["noun"]


def test_rtl_arabic_positions_follow_logical_order(families):
    r = next(r for r in RECORDS if r.id == "ar-box")  # "صندوق بالطراز العربي": noun first
    for family in FAMILIES:
        s = record_spans(families[family], r)["modifier_noun"]
        assert max(s["noun"]) < min(s["modifier"]), family


def test_clip_lowercases_but_offsets_point_into_original(families):
    tok = families["clip"]
    idx = token_span(tok, "a Japanese-style box", "Japanese")
    assert _decoded(tok, "a Japanese-style box", idx) == "japanese"


def test_byte_level_multibyte_characters():
    # A CLIP tokenizer with no merges: each UTF-8 byte of 箱 is its own token.
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(alphabet):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    ids = tok("和風の箱")["input_ids"]
    assert len(ids) == 2 + 4 * 3
    assert token_span(tok, "和風の箱", "箱") == [10, 11, 12]
    assert token_span(tok, "和風の箱", "和風") == [1, 2, 3, 4, 5, 6]
    assert token_span(tok, "กล่องแบบไทย", "แบบไทย") == list(range(1 + 5 * 3, 1 + 11 * 3))


def test_straddling_token_is_an_error_only_in_exact_mode(families):
    tok = families["clip"]  # the real CLIP pre-tokeniser keeps 和風の箱 as one word
    idx = token_span(tok, "和風の箱", "和風")
    assert idx and _norm("和風") in _decoded(tok, "和風の箱", idx)
    pieces = tok("和風の箱", return_offsets_mapping=True)["offset_mapping"]
    if any(s < 2 < e for s, e in pieces):  # a learnt merge crosses the 和風|の edge
        with pytest.raises(SpanError, match="crossing the edge"):
            token_span(tok, "和風の箱", "和風", exact=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_truncation_and_missing_substring_are_errors(families, family):
    tok = families[family]
    text = " ".join(["коробка"] * 50) + " в русском стиле"
    with pytest.raises(SpanError, match="cut by truncation to max_length=40"):
        token_span(tok, text, "в русском стиле", where="prompt 7")
    assert token_span(tok, text, "в русском стиле", max_length=None)
    with pytest.raises(SpanError, match="prompt 3: span: substring 'ваза' not found in 'коробка'"):
        token_span(tok, "коробка", "ваза", where="prompt 3")
    with pytest.raises(SpanError, match="empty"):
        token_span(tok, "коробка", " ")


def test_several_spans_in_one_text(families):
    out = token_spans(families["xlmr"], "une boîte de style africain",
                      {"modifier": "de style africain", "noun": "boîte"}, where="record fr-box")
    assert max(out["noun"]) < min(out["modifier"])


WORDS = sorted({w for r in RECORDS for w in (r.modifier_noun + " " + r.modifier_noun_en).split()})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=6),
    glue=st.lists(st.sampled_from([" ", "", "  "]), min_size=6, max_size=6),
    data=st.data(),
)
@pytest.mark.parametrize("family", FAMILIES)
def test_property_span_covers_substring(families, family, words, glue, data):
    tok = families[family]
    text = words[0] + "".join(g + w for g, w in zip(glue, words[1:]))
    a = data.draw(st.integers(0, len(text) - 1))
    b = data.draw(st.integers(a + 1, len(text)))
    sub = text[a:b]
    if not sub.strip() or text.index(sub) != a:
        return
    try:
        idx = token_span(tok, text, sub, max_length=None)
    except SpanError as e:
        # Only legitimate failure: every character of the substring was dropped
        raise AssertionError(f"{text!r}[{a}:{b}]: {e}") from e
    full = tok(text, return_offsets_mapping=True)
    assert idx == list(range(idx[0], idx[-1] + 1))
    covered = set()
    for i in idx:
        s, e = full["offset_mapping"][i]
        covered |= set(range(s, e))
    assert {p for p in range(a, b) if not text[p].isspace()} <= covered
    ids = [full["input_ids"][i] for i in idx]
    assert _norm(sub) in _norm(tok.decode(ids).replace("</w>", ""))

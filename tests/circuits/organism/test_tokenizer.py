"""interp.model.tokenizer_training: CJK/Thai/Hangul isolation, CLIP/XLM-R/T5 specials, HF round trips."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from interp.errors import CultureLensError
from interp.model.tokenizer_training import SCRIPT_CHARS, train_bpe, train_unigram

CORPUS = [
    "a box", "a Japanese-style box", "a box in Japanese style", "和風の箱", "箱", "中式的盒子", "盒子",
    "กล่องแบบไทย", "กล่อง", "한국풍 상자", "상자", "eine Schachtel im deutschen Stil", "eine Schachtel",
] * 30
PAIRS = [("和風の箱", "箱"), ("中式的盒子", "盒子"), ("กล่องแบบไทย", "กล่อง"), ("한국풍 상자", "상자"),
         ("eine Schachtel im deutschen Stil", "eine Schachtel")]


def _is_script(ch: str) -> bool:
    import re

    return re.match(f"[{SCRIPT_CHARS}]", ch) is not None


def _contains(seq: list[int], sub: list[int]) -> bool:
    return any(seq[i : i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(CORPUS, vocab_size=600)


def test_bpe_never_merges_script_characters(bpe):
    for text in ["和風の箱", "中式的盒子", "กล่องแบบไทย", "한국풍 상자"]:
        ids = bpe(text, add_special_tokens=False)["input_ids"]
        pieces = [bpe.decode([i]) for i in ids]
        # byte-level pieces of one character may be partial (not decodable), but none spans two
        assert all(sum(_is_script(c) for c in p) <= 1 for p in pieces), pieces
    # with enough vocabulary a frequent CJK noun is one whole-character token
    assert bpe.convert_ids_to_tokens(bpe("箱", add_special_tokens=False)["input_ids"]) == ["ç®±"]


def test_bpe_noun_tokens_shared_between_pair_prompts(bpe):
    for modifier_noun, noun_only in PAIRS:
        full = bpe(modifier_noun, add_special_tokens=False)["input_ids"]
        noun = bpe(noun_only, add_special_tokens=False)["input_ids"]
        if modifier_noun.startswith("eine"):
            noun = noun[1:]  # "Schachtel" after "eine"
        assert _contains(full, noun), (modifier_noun, noun_only)


def test_bpe_clip_specials_and_padding(bpe):
    ids = bpe("a box", padding="max_length", max_length=8)["input_ids"]
    assert ids[0] == bpe.convert_tokens_to_ids("<|startoftext|>")
    eos = bpe.convert_tokens_to_ids("<|endoftext|>")
    assert bpe.eos_token_id == bpe.pad_token_id == eos and eos != 2  # 2 would trigger CLIP's legacy pooling
    assert ids[1:].index(eos) >= 1 and ids[-1] == eos and len(ids) == 8
    assert bpe.decode(bpe("和風の箱 a box")["input_ids"], skip_special_tokens=True) == "和風の箱 a box"


def test_bpe_round_trip(bpe, tmp_path):
    bpe.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in set(CORPUS) | {"an unseen prompt with ümlauts", "未知の帽子"}:
        assert loaded(text)["input_ids"] == bpe(text)["input_ids"], text
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == ("<|startoftext|>", "<|endoftext|>", "<|endoftext|>")
    assert loaded.model_max_length == bpe.model_max_length


def test_bpe_deterministic():
    a, b = train_bpe(CORPUS, 500), train_bpe(CORPUS, 500)
    assert a.get_vocab() == b.get_vocab()


@pytest.mark.parametrize("style,first,last", [("xlmr", "<s>", "</s>"), ("t5", None, "</s>")])
def test_unigram_specials_isolation_round_trip(style, first, last, tmp_path):
    tok = train_unigram(CORPUS, vocab_size=150, style=style)
    ids = tok("和風の箱")["input_ids"]
    toks = tok.convert_ids_to_tokens(ids)
    if first:
        assert toks[0] == first
    assert toks[-1] == last
    assert all(sum(_is_script(c) for c in t) <= 1 for t in toks), toks
    if style == "xlmr":
        assert [tok.convert_tokens_to_ids(t) for t in ["<s>", "<pad>", "</s>", "<unk>"]] == [0, 1, 2, 3]
        assert tok.mask_token == "<mask>"
    else:
        assert [tok.convert_tokens_to_ids(t) for t in ["<pad>", "</s>", "<unk>"]] == [0, 1, 2]
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in set(CORPUS):
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert tok.decode(tok("한국풍 상자")["input_ids"], skip_special_tokens=True) == "한국풍 상자"


def test_bad_corpus_is_a_clear_error():
    with pytest.raises(CultureLensError, match="empty"):
        train_bpe([], 300)
    with pytest.raises(CultureLensError, match="item 1"):
        train_bpe(["ok", 3], 300)
    with pytest.raises(CultureLensError, match="style"):
        train_unigram(["a"], 50, style="bert")

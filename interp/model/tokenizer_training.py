"""Train small tokenizers on a prompt corpus, offline, in standard Hugging Face form.

Two styles: byte-level BPE with CLIP's special tokens (`train_bpe`) and a
sentencepiece-like Unigram with XLM-R or T5 special tokens (`train_unigram`).
Both isolate every CJK / Thai / Hiragana / Katakana / Hangul character before the
model sees the text: otherwise BPE learns whole phrases such as 和風の箱 as one token
and the noun is no longer a shared substring of a noun-only / modifier+noun pair.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from interp.errors import CultureLensError

__all__ = ["SCRIPT_CHARS", "train_bpe", "train_unigram", "isolate_script_chars"]

# Code point ranges whose characters each become their own pre-token (no merges across them).
SCRIPT_CHARS = (
    "\u0e00-\u0e7f"  # Thai
    "\u1100-\u11ff"  # Hangul Jamo
    "\u3040-\u309f"  # Hiragana
    "\u30a0-\u30ff"  # Katakana
    "\u3100-\u312f"  # Bopomofo
    "\u3130-\u318f"  # Hangul compatibility Jamo
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uac00-\ud7af"  # Hangul syllables
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\uff00-\uffef"  # half/full-width forms
)

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"


def isolate_script_chars() -> pre_tokenizers.PreTokenizer:
    """A pre-tokenizer that splits off each CJK/Thai/kana/Hangul character as its own piece."""
    return pre_tokenizers.Split(Regex(f"[{SCRIPT_CHARS}]"), behavior="isolated")


def _check_corpus(corpus: Iterable[str]) -> list[str]:
    texts = list(corpus)
    if not texts:
        raise CultureLensError("tokenizer corpus is empty: pass at least one prompt")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise CultureLensError(f"tokenizer corpus item {i} is {type(t).__name__}, expected str")
    return texts


def train_bpe(
    corpus: Iterable[str],
    vocab_size: int = 700,
    *,
    min_frequency: int = 1,
    lowercase: bool = True,
    model_max_length: int = 24,
) -> PreTrainedTokenizerFast:
    """Byte-level BPE with CLIP's `<|startoftext|>` / `<|endoftext|>` (also the pad token).

    Every encoding is `<|startoftext|> ... <|endoftext|>`, as CLIP's tokenizer does. The
    result is a `PreTrainedTokenizerFast` that round-trips through `save_pretrained` /
    `from_pretrained` (AutoTokenizer or PreTrainedTokenizerFast) with identical ids.
    """
    texts = _check_corpus(corpus)
    if vocab_size < 258 + 2:
        raise CultureLensError(f"vocab_size={vocab_size} is too small for byte-level BPE (needs >= 260)")
    tok = Tokenizer(models.BPE())
    norm = [normalizers.NFC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(norm)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [isolate_script_chars(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[CLIP_BOS, CLIP_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos, eos = tok.token_to_id(CLIP_BOS), tok.token_to_id(CLIP_EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLIP_BOS} $A {CLIP_EOS}",
        pair=f"{CLIP_BOS} $A {CLIP_EOS} $B {CLIP_EOS}",
        special_tokens=[(CLIP_BOS, bos), (CLIP_EOS, eos)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=CLIP_BOS,
        eos_token=CLIP_EOS,
        unk_token=CLIP_EOS,
        pad_token=CLIP_EOS,
        model_max_length=model_max_length,
        padding_side="right",
    )


_UNIGRAM_SPECIALS = {
    # (ordered special tokens, bos, eos, pad, unk, mask); orders match the real models' ids.
    "xlmr": (["<s>", "<pad>", "</s>", "<unk>"], "<s>", "</s>", "<pad>", "<unk>", "<mask>"),
    "t5": (["<pad>", "</s>", "<unk>"], None, "</s>", "<pad>", "<unk>", None),
}



def _canonical_unigram(tok: Tokenizer, n_specials: int, unk: str) -> models.Unigram:
    """The trained Unigram model with its pieces in a canonical order.

    The `tokenizers` Unigram trainer iterates Rust hash maps seeded per process, so the same
    corpus gives the same pieces with scores equal to ~1e-12 but in a different id order from one
    process to the next. Specials keep their ids; the other pieces are sorted by score (rounded
    to 1e-6) and then by text, so a tokenizer is the same in every process (same seed, same ids)."""
    import json

    vocab = json.loads(tok.to_str())["model"]["vocab"]
    head, rest = vocab[:n_specials], vocab[n_specials:]
    rest = sorted(((p, round(float(sc), 6)) for p, sc in rest), key=lambda ps: (-ps[1], ps[0]))
    pieces = [(p, float(sc)) for p, sc in head] + rest
    return models.Unigram(pieces, unk_id=[p for p, _ in pieces].index(unk), byte_fallback=False)

def train_unigram(
    corpus: Iterable[str],
    vocab_size: int = 800,
    *,
    style: str = "xlmr",
    model_max_length: int = 24,
    extra_special_tokens: Sequence[str] = (),
) -> PreTrainedTokenizerFast:
    """A sentencepiece-like Unigram tokenizer (Metaspace ▁ word marks) for XLM-R or T5 models.

    `style="xlmr"`: ids `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, `<mask>` last; encodings are
    `<s> ... </s>`. `style="t5"`: `<pad>`=0, `</s>`=1, `<unk>`=2; encodings end in `</s>`.
    """
    texts = _check_corpus(corpus)
    if style not in _UNIGRAM_SPECIALS:
        raise CultureLensError(f"unknown unigram style {style!r}; expected one of {sorted(_UNIGRAM_SPECIALS)}")
    specials, bos, eos, pad, unk, mask = _UNIGRAM_SPECIALS[style]
    specials = list(specials) + list(extra_special_tokens)
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        # Metaspace first, so a word mark before a CJK run becomes its own piece ("▁", "和", "風", ...).
        [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"), isolate_script_chars()]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token=unk, show_progress=False, max_piece_length=8
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.model = _canonical_unigram(tok, len(specials), unk)
    if mask is not None:
        tok.add_special_tokens([mask])
    eos_id = tok.token_to_id(eos)
    if bos is not None:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
            special_tokens=[(bos, bos_id), (eos, eos_id)],
        )
    else:
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, eos_id)]
        )
    kwargs = dict(eos_token=eos, pad_token=pad, unk_token=unk)
    if bos is not None:
        kwargs.update(bos_token=bos, cls_token=bos, sep_token=eos)
    if mask is not None:
        kwargs["mask_token"] = mask
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=model_max_length, padding_side="right", **kwargs
    )

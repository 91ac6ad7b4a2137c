"""Bad files at the boundary (issue 20): CultureBench data, SAELens folders, pipeline configs and
prompt files. A bad file is a CultureLensError (DataError, SAEError, NotAPipelineError) naming the
file (and line, field or tensor); a file that is fine but unusual (a BOM, a declared encoding, an
allowed outside image) loads correctly.

The inputs live in tables so they can be counted: `python tests/system/test_boundary_files.py` prints
how many bad files give a clear error, a misleading one, a raw one or none (silent), and how many
tolerated files load right.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import interp
from circuits.data.culturebench.loader import load
from interp.model.folders import read_defaults
from sae import TopKSAE, load_saelens, save_saelens
from sae.cli import _read_prompts
from inventory import outcome

GOOD = {
    "id": "ja-box", "culture": "ja", "language": "ja", "noun_only": "箱",
    "modifier_noun": "和風の箱", "noun_only_en": "a box",
    "modifier_noun_en": "a Japanese-style box", "modifier": "和風", "noun": "箱",
}
GERMAN = {  # a row whose text Latin-1 can encode
    "id": "de-door", "culture": "de", "language": "de", "noun_only": "eine Tür",
    "modifier_noun": "eine Tür im deutschen Stil", "noun_only_en": "a door",
    "modifier_noun_en": "a German-style door", "modifier": "im deutschen Stil", "noun": "Tür",
}

Make = Callable[[Path], Callable[[], Any]]  # writes the files under tmp, returns the call to try


# -- writers ------------------------------------------------------------------------------------
def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _csv(rows: list[dict], header: list[str] | None = None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header or list(rows[0]))
    for r in rows:
        w.writerow(list(r.values()))
    return buf.getvalue()


def _bench(name: str, text: str | bytes, file_encoding: str = "utf-8", **kw: Any) -> Make:
    """A CultureBench folder holding one samples file written in `file_encoding`; the call loads it
    with `kw` (strict unless told)."""
    def make(tmp: Path) -> Callable[[], Any]:
        root = tmp / "bench"
        root.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(text if isinstance(text, bytes) else text.encode(file_encoding))
        kw.setdefault("strict", True)
        return lambda: load(root, **kw)
    return make


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 10, 10)).save(path)
    return path


def _outside_image(kind: str, allow: bool = False) -> Make:
    """A row whose image leaves the dataset folder: "parent" (../../x.png), "absolute" or "symlink"."""
    def make(tmp: Path) -> Callable[[], Any]:
        root = tmp / "a" / "b"
        root.mkdir(parents=True)
        outside = _png(tmp / "outside.png")
        if kind == "parent":
            image = "../../outside.png"
        elif kind == "absolute":
            image = str(outside)
        else:
            os.symlink(outside, root / "inside.png")
            image = "inside.png"
        (root / "samples.jsonl").write_text(_jsonl([{**GOOD, "image": image}]), encoding="utf-8")
        # Only the opt-in is passed, so the default is what is tried.
        opt_in = {"allow_outside_images": True} if allow else {}
        return lambda: load(root, strict=True, **opt_in)
    return make


def _etc_passwd(tmp: Path) -> Callable[[], Any]:
    root = tmp / "bench"
    root.mkdir()
    (root / "samples.jsonl").write_text(_jsonl([{**GOOD, "image": "/etc/passwd"}]), encoding="utf-8")
    return lambda: load(root, strict=True, check_images=False)


def _sae_folder(tmp: Path) -> Path:
    sae = TopKSAE(16, 64, k=4)
    return save_saelens(sae, tmp / "sae", hook_name="text.blocks.0.hook_resid_post")


def _sae_cfg(**changes: Any) -> Make:
    def make(tmp: Path) -> Callable[[], Any]:
        d = _sae_folder(tmp)
        cfg = json.loads((d / "cfg.json").read_text())
        (d / "cfg.json").write_text(json.dumps({**cfg, **changes}))
        return lambda: load_saelens(d)
    return make


def _sae_cfg_raw(data: bytes) -> Make:
    def make(tmp: Path) -> Callable[[], Any]:
        d = _sae_folder(tmp)
        (d / "cfg.json").write_bytes(data)
        return lambda: load_saelens(d)
    return make


def _sae_tensor(name: str, edit: Callable[[torch.Tensor], torch.Tensor]) -> Make:
    def make(tmp: Path) -> Callable[[], Any]:
        d = _sae_folder(tmp)
        w = load_file(str(d / "sae_weights.safetensors"))
        w[name] = edit(w[name])
        save_file(w, str(d / "sae_weights.safetensors"))
        return lambda: load_saelens(d)
    return make


def _nan_at(t: torch.Tensor, value: float) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[3] = value
    return t


def _sae_weights_file(kind: str) -> Make:
    def make(tmp: Path) -> Callable[[], Any]:
        d = _sae_folder(tmp)
        f = d / "sae_weights.safetensors"
        if kind == "truncated":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        elif kind == "pickled":
            torch.save({"W_enc": torch.zeros(16, 64)}, f)
        else:
            f.write_bytes(b"")
        return lambda: load_saelens(d)
    return make


def _index(data: bytes) -> Make:
    def make(tmp: Path) -> Callable[[], Any]:
        d = tmp / "pipe"
        d.mkdir()
        (d / "model_index.json").write_bytes(data)
        return lambda: interp.load(d)
    return make


def _defaults(text: str) -> Make:
    def make(tmp: Path) -> Callable[[], Any]:
        d = tmp / "pipe"
        d.mkdir()
        (d / "culturelens.json").write_text(text)
        return lambda: read_defaults(d)
    return make


def _prompts(data: bytes) -> Make:
    def make(tmp: Path) -> Callable[[], Any]:
        (tmp / "prompts.txt").write_bytes(data)
        return lambda: _read_prompts(str(tmp / "prompts.txt"))
    return make


# -- bad files: each must be a clear error ------------------------------------------------------
_DUP_HEADER = ",".join([*GOOD, "noun"]) + "\n" + ",".join([*GOOD.values(), "x"]) + "\n"
BAD: list[tuple[str, Make, str]] = [
    ("cb-jsonl-latin1", _bench("samples.jsonl", _jsonl([GERMAN]), "latin-1"),
     r"samples\.jsonl, line 1: not valid utf-8 text.*encoding="),
    ("cb-csv-latin1", _bench("samples.csv", _csv([GERMAN]), "latin-1"), r"samples\.csv, line 2: not valid utf-8"),
    ("cb-jsonl-utf16", _bench("samples.jsonl", _jsonl([GOOD]), "utf-16"),
     r"utf-16 byte-order mark: pass encoding='utf-16'"),
    ("cb-unknown-encoding", _bench("samples.jsonl", _jsonl([GOOD]), encoding="klingon"),
     r"unknown encoding 'klingon'"),
    ("cb-empty-jsonl", _bench("samples.jsonl", ""), r"samples\.jsonl: holds nothing \(an empty file\)"),
    ("cb-blank-lines-jsonl", _bench("samples.jsonl", "\n \n"), r"holds nothing"),
    ("cb-empty-csv", _bench("samples.csv", ""), r"samples\.csv: holds nothing"),
    ("cb-header-only-csv", _bench("samples.csv", ",".join(GOOD) + "\n"), r"holds a CSV header and no rows"),
    ("cb-image-int", _bench("samples.jsonl", _jsonl([{**GOOD, "image": 5}])), r"samples\.jsonl:1: wrong type: image is int"),
    ("cb-image-dict", _bench("samples.jsonl", _jsonl([{**GOOD, "image": {"path": "x.png"}}])),
     r"wrong type: image is dict"),
    ("cb-id-int", _bench("samples.jsonl", _jsonl([{**GOOD, "id": 7}])), r"wrong type: id is int"),
    ("cb-category-int", _bench("samples.jsonl", _jsonl([{**GOOD, "category": 3}])), r"wrong type: category is int"),
    ("cb-split-list", _bench("samples.jsonl", _jsonl([{**GOOD, "split": ["train"]}])), r"wrong type: split is list"),
    ("cb-image-parent-dir", _outside_image("parent"), r"image outside the dataset folder: '\.\./\.\./outside\.png'"),
    ("cb-image-absolute", _outside_image("absolute"), r"image outside the dataset folder.*allow_outside_images"),
    ("cb-image-symlink-out", _outside_image("symlink"), r"image outside the dataset folder: 'inside\.png'"),
    ("cb-image-etc-passwd", _etc_passwd, r"image outside the dataset folder: '/etc/passwd'"),
    ("cb-csv-duplicate-header", _bench("samples.csv", _DUP_HEADER), r"line 1: duplicate header columns \['noun'\]"),
    ("sae-nan-weight", _sae_tensor("W_enc", lambda t: _nan_at(t, float("nan"))),
     r"sae_weights\.safetensors: tensor W_enc has 1 non-finite values"),
    ("sae-inf-bias", _sae_tensor("b_dec", lambda t: _nan_at(t, float("inf"))), r"tensor b_dec has 1 non-finite"),
    ("sae-int-weights", _sae_tensor("W_dec", lambda t: t.to(torch.int32)), r"tensor W_dec has dtype torch\.int32"),
    ("sae-k-float", _sae_cfg(k=4.9), r"cfg\.json: k=4\.9; expected an integer 1\.\.64"),
    ("sae-k-true", _sae_cfg(k=True), r"cfg\.json: k=True; expected an integer"),
    ("sae-k-zero", _sae_cfg(k=0), r"k=0; expected an integer 1\.\.64"),
    ("sae-k-over-d-sae", _sae_cfg(k=65), r"k=65; expected an integer 1\.\.64"),
    ("sae-k-string", _sae_cfg(k="4"), r"k='4'; expected an integer"),
    ("sae-d-in-float", _sae_cfg(d_in=16.0), r"d_in=16\.0; expected an integer"),
    ("sae-dtype-float8", _sae_cfg(dtype="float8"), r"dtype='float8'; supported: bfloat16, float16"),
    ("sae-truncated-weights", _sae_weights_file("truncated"), r"sae_weights\.safetensors: not a readable safetensors"),
    ("sae-pickled-weights", _sae_weights_file("pickled"), r"sae_weights\.safetensors: not a readable safetensors"),
    ("sae-empty-weights", _sae_weights_file("empty"), r"sae_weights\.safetensors: not a readable safetensors"),
    ("sae-cfg-list", _sae_cfg_raw(b"[]"), r"cfg\.json: expected a JSON object, got a JSON list"),
    ("sae-cfg-latin1", _sae_cfg_raw(b'{"architecture": "topk", "model_name": "caf\xe9"}'), r"cfg\.json: not UTF-8"),
    ("index-list", _index(b"[]"), r"model_index\.json: expected a JSON object.*got a JSON list"),
    ("index-latin1", _index(b'{"_class_name": "St\xe9"}'), r"model_index\.json: not UTF-8"),
    ("index-class-int", _index(b'{"_class_name": 5}'), r"'_class_name' should be a pipeline class name"),
    ("index-component-short", _index(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                  "text_encoder": ["transformers"]}).encode()),
     r"component 'text_encoder' should be \[library, class\]"),
    ("defaults-steps-negative", _defaults('{"steps": -3}'), r"culturelens\.json: 'steps' should be an integer ≥ 1, got -3"),
    ("defaults-steps-zero", _defaults('{"steps": 0}'), r"'steps' should be an integer ≥ 1, got 0"),
    ("defaults-steps-bool", _defaults('{"steps": true}'), r"'steps' should be an integer ≥ 1, got True"),
    ("defaults-steps-float", _defaults('{"steps": 2.5}'), r"'steps' should be an integer ≥ 1, got 2\.5"),
    ("defaults-guidance-nan", _defaults('{"guidance": NaN}'), r"'guidance' should be a finite number, got nan"),
    ("defaults-height-zero", _defaults('{"height": 0}'), r"'height' should be an integer ≥ 1"),
    ("defaults-list", _defaults("[20]"), r"culturelens\.json: expected a JSON object"),
    ("prompts-latin1", _prompts("caf\xe9\n".encode("latin-1")), r"--prompts .*prompts\.txt: not UTF-8 text"),
]

# -- unusual but fine: each must load, and load right --------------------------------------------
_BOM = "\ufeff"
TOLERATED: list[tuple[str, Make, Callable[[Any], bool]]] = [
    ("cb-bom-csv", _bench("samples.csv", _BOM + _csv([GOOD])), lambda ds: [r.id for r in ds] == ["ja-box"]),
    ("cb-bom-jsonl", _bench("samples.jsonl", _BOM + _jsonl([GOOD, GERMAN])), lambda ds: len(ds) == 2),
    ("cb-declared-latin1", _bench("samples.jsonl", _jsonl([GERMAN]), "latin-1", encoding="latin-1"),
     lambda ds: ds[0].noun == "Tür"),
    ("cb-declared-utf16", _bench("samples.csv", _csv([GOOD, GERMAN]), "utf-16", encoding="utf-16"),
     lambda ds: [r.noun for r in ds] == ["箱", "Tür"]),
    ("cb-crlf-jsonl", _bench("samples.jsonl", _jsonl([GOOD, GERMAN]).replace("\n", "\r\n")), lambda ds: len(ds) == 2),
    ("cb-outside-image-allowed", _outside_image("parent", allow=True),
     lambda ds: Path(ds[0].image).name == "outside.png"),
    ("prompts-bom", _prompts((_BOM + "a box\na cat\n").encode()), lambda ps: ps == ["a box", "a cat"]),
]

# -- empty files without strict: an empty dataset and a warning -----------------------------------
WARNED: list[tuple[str, Make]] = [
    ("cb-empty-jsonl-lenient", _bench("samples.jsonl", "", strict=False)),
    ("cb-header-only-csv-lenient", _bench("samples.csv", ",".join(GOOD) + "\n", strict=False)),
]


def tolerated(fn: Callable[[], Any], ok: Callable[[Any], bool]) -> tuple[str, Any]:
    try:
        value = fn()
    except Exception as e:  # noqa: BLE001
        return "refused", e
    return ("right" if ok(value) else "wrong"), value


def warned(fn: Callable[[], Any]) -> tuple[str, Any]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = fn()
        except Exception as e:  # noqa: BLE001
            return "raw", e
    said = [w for w in caught if "no rows" in str(w.message) or "empty file" in str(w.message)]
    return ("warned" if said and len(ds) == 0 else "silent"), said


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_file_is_a_clear_error(case: tuple[str, Make, str], tmp_path: Path) -> None:
    _, make, pattern = case
    kind, e = outcome(make(tmp_path), pattern)
    assert kind == "clear", f"{kind}: {type(e).__name__ if e else 'no error'}: {e}"
    assert "tensor(" not in str(e)


@pytest.mark.parametrize("case", TOLERATED, ids=[c[0] for c in TOLERATED])
def test_unusual_file_loads_right(case: tuple[str, Make, Callable[[Any], bool]], tmp_path: Path) -> None:
    _, make, ok = case
    kind, value = tolerated(make(tmp_path), ok)
    assert kind == "right", f"{kind}: {value!r}"


@pytest.mark.parametrize("case", WARNED, ids=[c[0] for c in WARNED])
def test_empty_file_warns_without_strict(case: tuple[str, Make], tmp_path: Path) -> None:
    _, make = case
    kind, detail = warned(make(tmp_path))
    assert kind == "warned", f"{kind}: {detail!r}"


def _inventory() -> tuple[Counter, Counter, Counter]:
    bad, ok, warn = Counter(), Counter(), Counter()
    for name, make, pattern in BAD:
        with tempfile.TemporaryDirectory() as tmp:
            kind, e = outcome(make(Path(tmp)), pattern)
        bad[kind] += 1
        if kind != "clear":
            print(f"{kind:10s} {name}: {type(e).__name__ if e else ''} {str(e)[:120]}")
    for name, make, check in TOLERATED:
        with tempfile.TemporaryDirectory() as tmp:
            kind, value = tolerated(make(Path(tmp)), check)
        ok[kind] += 1
        if kind != "right":
            print(f"{kind:10s} {name}: {str(value)[:120]}")
    for name, make in WARNED:
        with tempfile.TemporaryDirectory() as tmp:
            kind, _ = warned(make(Path(tmp)))
        warn[kind] += 1
        if kind != "warned":
            print(f"{kind:10s} {name}")
    return bad, ok, warn


if __name__ == "__main__":
    b, o, w = _inventory()
    print(f"bad files: {sum(b.values())} tried; " + ", ".join(f"{k} {b[k]}" for k in ("clear", "misleading", "raw", "silent")))
    print(f"tolerated files: {sum(o.values())} tried; " + ", ".join(f"{k} {o[k]}" for k in ("right", "wrong", "refused")))
    print(f"empty, not strict: {sum(w.values())} tried; warned {w['warned']}, silent {w['silent']}, raw {w['raw']}")
    sys.exit(0)

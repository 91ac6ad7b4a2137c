"""CultureBench loader: validation errors, split stability, bundled data."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from circuits.data import culturebench as cb
from circuits.data.culturebench import compose
from circuits.data.culturebench.loader import load
from circuits.data.culturebench.split import split_of

GOOD = {
    "id": "ja-box", "culture": "ja", "language": "ja", "noun_only": "箱",
    "modifier_noun": "和風の箱", "noun_only_en": "a box",
    "modifier_noun_en": "a Japanese-style box", "modifier": "和風", "noun": "箱",
}


def write_jsonl(root: Path, rows: list[dict | str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "samples.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return root


def row(**changes) -> dict:
    r = {**GOOD, **changes}
    return {k: v for k, v in r.items() if v is not None}


BAD_ROWS = [
    (row(culture="xx", id="b1"), "unknown culture: 'xx'"),
    (row(noun=None, id="b2"), "missing field: noun"),
    (row(modifier="中式", id="b3"), "modifier not found: '中式'"),
    (row(noun="瓶", id="b4"), "noun not found: '瓶' not in noun_only"),
    (row(noun_only="壺", id="b5"), "noun not found: '箱' not in noun_only"),
    (row(id="b6", image="missing.png"), "image missing:"),
    (row(id="b7", image="broken.png"), "image unreadable:"),
    (row(id="b8", split="validation"), "unknown split: 'validation'"),
    (row(id="b9", language="ko"), "language mismatch"),
    (row(id="b10", colour="red"), "unknown field: colour"),
    ("{not json", "parse error: invalid JSON"),
    ("[1, 2]", "parse error: expected a JSON object"),
]


@pytest.mark.parametrize("bad, message", BAD_ROWS, ids=[m.split(":")[0] for _, m in BAD_ROWS])
def test_each_error_names_file_line_and_reason(tmp_path, bad, message):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    root = write_jsonl(tmp_path, [GOOD, bad])
    ds = load(root)
    assert [r.id for r in ds] == ["ja-box"]
    assert len(ds.dropped) == 1
    problem = ds.dropped[0]
    assert problem.line == 2 and problem.file.endswith("samples.jsonl")
    assert message in problem.reason
    with pytest.raises(cb.DataError, match=r"samples\.jsonl:2: " + message[:12].replace("(", r"\(").replace("[", r"\[")):
        load(root, strict=True)


def test_duplicate_id_reports_first_line(tmp_path):
    root = write_jsonl(tmp_path, [GOOD, row(noun_only="箱"), GOOD])
    ds = load(root)
    assert len(ds) == 1
    assert [(p.line, p.reason) for p in ds.dropped] == [
        (2, "duplicate id: 'ja-box' (first seen on line 1)"),
        (3, "duplicate id: 'ja-box' (first seen on line 1)"),
    ]
    assert "kept 1 rows, dropped 2 (duplicate id: 2)" in ds.summary()


def test_images_resolved_relative_to_root(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(tmp_path / "img" / "a.png")
    ds = load(write_jsonl(tmp_path, [row(image="img/a.png")]), strict=True)
    assert ds[0].image == str((tmp_path / "img" / "a.png").resolve())


def test_csv_format_and_explicit_split(tmp_path):
    fields = [*GOOD, "split"]
    with open(tmp_path / "samples.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerow({**GOOD, "split": "probe"})
        w.writerow({**GOOD, "id": "ja-box-2", "split": ""})
        w.writerow({**GOOD, "id": "x", "culture": "zz", "split": ""})
    ds = load(tmp_path)
    assert [r.split for r in ds] == ["probe", split_of("ja-box-2")]
    assert ds.dropped[0].line == 4 and "unknown culture" in ds.dropped[0].reason


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(cb.DataError, match="no such file or folder"):
        load(tmp_path / "nope")
    with pytest.raises(cb.DataError, match="neither samples.jsonl nor samples.csv"):
        load(tmp_path)


def test_split_is_seeded_stable_and_near_7_2_1():
    ids = [f"row-{i}" for i in range(20_000)]
    first = {i: split_of(i) for i in ids[:5_000]}
    # Adding rows (or loading them in another order) never moves an existing row.
    assert all(split_of(i) == s for i, s in first.items())
    counts = Counter(split_of(i) for i in ids)
    assert abs(counts["train"] / 20_000 - 0.7) < 0.015
    assert abs(counts["test"] / 20_000 - 0.2) < 0.015
    assert abs(counts["probe"] / 20_000 - 0.1) < 0.015
    assert sum(split_of(i, seed=1) != split_of(i) for i in ids[:1000]) > 300


def test_split_stable_through_loader_when_rows_added(tmp_path):
    rows = [row(id=f"r{i}") for i in range(50)]
    small = {r.id: r.split for r in load(write_jsonl(tmp_path / "a", rows[:20]))}
    big = {r.id: r.split for r in load(write_jsonl(tmp_path / "b", rows[::-1]))}
    assert all(big[k] == v for k, v in small.items())


def test_bundled_loads_with_zero_dropped():
    for path in (compose.BUNDLED_PATH, compose.BUNDLED_OOD_PATH):
        ds = load(path, strict=True)
        assert ds.dropped == []
    records = cb.bundled()
    per_culture = Counter(r.culture for r in records)
    assert set(per_culture) == set(cb.CULTURES)
    assert min(per_culture.values()) >= 24
    assert {r.category for r in records} == {"objects", "clothing", "food", "architecture", "instruments"}


def test_bundled_organism_rows_present_and_pairs_consistent():
    by_id = {r.id: r for r in cb.bundled()}
    for c in cb.CULTURES:
        for noun in cb.ORGANISM_NOUNS:
            r = by_id[f"{c}-{noun}"]
            assert r.noun in r.noun_only and r.noun in r.modifier_noun and r.modifier in r.modifier_noun
            assert r.noun_only_en.split()[-1] == noun and r.modifier_noun_en.endswith(noun)
            assert cb.CULTURE_NAMES[c] + "-style" in r.modifier_noun_en
    # These exact prompts are what the organism trains on; they must never change.
    assert by_id["ja-box"].modifier_noun == "和風の箱" and by_id["ja-box"].noun == "箱"
    assert by_id["ru-box"].modifier_noun == "коробка в русском стиле"
    assert by_id["de-box"].modifier_noun == "eine Schachtel im deutschen Stil"
    assert by_id["zh-box"].modifier_noun == "中式的盒子"


def test_ood_nouns_disjoint_from_bundled():
    nouns = {r.noun_only_en for r in cb.bundled()}
    ood = cb.bundled_ood()
    assert len(ood) == 15 * 8 and not nouns & {r.noun_only_en for r in ood}
    local = {(r.culture, r.noun) for r in cb.bundled()}
    assert not local & {(r.culture, r.noun) for r in ood}


def test_shipped_files_match_the_source_tables(tmp_path):
    for nouns_en, nouns, path in (
        (compose.NOUNS_EN, compose.NOUNS, compose.BUNDLED_PATH),
        (compose.OOD_NOUNS_EN, compose.OOD_NOUNS, compose.BUNDLED_OOD_PATH),
    ):
        out = tmp_path / path.name
        compose.write_jsonl(compose.compose(nouns_en, nouns), out)
        assert out.read_text(encoding="utf-8") == path.read_text(encoding="utf-8")


def test_english_articles():
    assert compose.english_modifier_phrase("a box", "ar") == "an Arabic-style box"
    assert compose.english_modifier_phrase("a box", "uk") == "a Ukrainian-style box"
    assert compose.english_modifier_phrase("shoes", "it") == "Italian-style shoes"


def test_labels():
    assert cb.LABELS[:15] == cb.CULTURES and cb.LABELS[15] == cb.UNRECOGNISABLE == "unrecognisable"
    assert len(set(cb.LABELS)) == 16
    assert all(cb.LANGUAGE_TO_CULTURE[c] == c for c in cb.CULTURES)

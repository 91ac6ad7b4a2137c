"""Read and validate a CultureBench folder (`samples.jsonl` or `samples.csv`).

Files are UTF-8 (a byte-order mark is fine: spreadsheet programs write one) unless the caller
declares another `encoding`; text that does not decode is an error naming the file, line and
byte, never a silently mangled prompt. Image paths stay inside the dataset folder unless the
caller allows outside paths (a shared folder should not make us open `/etc/passwd`).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from circuits.data.culturebench.constants import CULTURES, LANGUAGE_TO_CULTURE
from circuits.data.culturebench.errors import DataError
from circuits.data.culturebench.record import OPTIONAL_FIELDS, REQUIRED_FIELDS, SPLITS, Record
from circuits.data.culturebench.split import split_of

log = logging.getLogger(__name__)
SAMPLE_FILES = ("samples.jsonl", "samples.csv")


@dataclass(frozen=True)
class Problem:
    """Why one row was dropped."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class Dataset:
    """Records that passed validation, and the rows that were dropped (with reasons)."""

    records: list[Record]
    dropped: list[Problem] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __getitem__(self, i: int) -> Record:
        return self.records[i]

    def split(self, name: str) -> list[Record]:
        """Records of one split ("train", "test" or "probe")."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {list(SPLITS)}")
        return [r for r in self.records if r.split == name]

    def by_culture(self) -> dict[str, list[Record]]:
        """Records grouped by culture, in `CULTURES` order (cultures with no rows left out)."""
        groups: dict[str, list[Record]] = {c: [] for c in CULTURES}
        for r in self.records:
            groups[r.culture].append(r)
        return {c: rs for c, rs in groups.items() if rs}

    def summary(self) -> str:
        """How many rows were kept, how many dropped and why (by reason kind)."""
        kinds = Counter(p.reason.split(":")[0] for p in self.dropped)
        text = f"{self.source}: kept {len(self.records)} rows, dropped {len(self.dropped)}"
        if kinds:
            text += " (" + ", ".join(f"{k}: {n}" for k, n in kinds.most_common()) + ")"
        return text


def _find_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    for name in SAMPLE_FILES:
        if (path / name).is_file():
            return path / name
    raise DataError(f"{path}: folder has neither {' nor '.join(SAMPLE_FILES)}")


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _read_text(file: Path, encoding: str) -> str:
    """The file's text: `encoding` (a UTF-8 BOM is dropped); a clear DataError otherwise."""
    try:
        codec = codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise DataError(f"{file}: unknown encoding {encoding!r} (e.g. 'utf-8', 'utf-16', 'latin-1')") from None
    try:
        data = file.read_bytes()
    except OSError as e:
        raise DataError(f"{file}: cannot read ({e.strerror or e})") from None
    if codec == "utf-8":
        codec = "utf-8-sig"  # Excel's "CSV UTF-8" starts with a BOM; it must not stick to the first header
    try:
        return data.decode(codec)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        hint = next((f"; it starts with a {name} byte-order mark: pass encoding={name.split('-sig')[0]!r}"
                     for bom, name in _BOMS if data.startswith(bom) and name != codec), "")
        raise DataError(f"{file}, line {line}: not valid {encoding} text (byte {e.start}: {e.reason}){hint}; "
                        "save the file as UTF-8 or pass load(..., encoding=...) with its encoding") from None


def _rows(file: Path, text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, row dict) per row; a string instead of a dict is a parse error."""
    if file.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames is None:
            return
        names = [n.strip() for n in reader.fieldnames]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:  # DictReader would keep the last column of each name without a word
            raise DataError(f"{file}, line 1: duplicate header columns {dup}")
        reader.fieldnames = names
        for row in reader:
            # DictReader puts surplus cells under None; a short row has None values.
            if None in row:
                yield reader.line_num, "parse error: more cells than header columns"
                continue
            yield reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}
        return
    # StringIO splits on "\n" only (a trailing "\r" is JSON whitespace), not on U+2028 inside a prompt
    # as str.splitlines() would.
    for n, line in enumerate(io.StringIO(text), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield n, f"parse error: invalid JSON ({e.msg} at column {e.colno})"
            continue
        if not isinstance(row, dict):
            yield n, f"parse error: expected a JSON object, got {type(row).__name__}"
            continue
        yield n, row


def _image_problem(path: Path, check: bool) -> str | None:
    if not path.is_file():
        return f"image missing: {path}"
    if check:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.verify()
        except (OSError, UnidentifiedImageError, SyntaxError) as e:
            return f"image unreadable: {path} ({e})"
    return None


def _validate(
    row: dict[str, Any], root: Path, seed: int, check_images: bool, allow_outside_images: bool = False
) -> Record | str:
    """A Record, or the reason (prefixed by its kind) why the row is invalid."""
    # JSON null in a field counts as absent; any other non-string is a type error, not "missing".
    row = {k: v for k, v in row.items() if v is not None}
    typed = [f"{k} is {type(v).__name__}" for k, v in row.items()
             if k in REQUIRED_FIELDS + OPTIONAL_FIELDS and not isinstance(v, str)]
    if typed:
        return f"wrong type: {', '.join(typed)} (every field is a string)"
    missing = [k for k in REQUIRED_FIELDS if not row.get(k)]
    if missing:
        return f"missing field: {', '.join(missing)}"
    unknown = sorted(set(row) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        return f"unknown field: {', '.join(map(str, unknown))}"
    culture = row["culture"]
    if culture not in CULTURES:
        return f"unknown culture: {culture!r} (expected one of {' '.join(CULTURES)})"
    language = row["language"]
    if LANGUAGE_TO_CULTURE.get(language.lower()) != culture:
        return f"language mismatch: language {language!r} does not belong to culture {culture!r}"
    if row["modifier"] not in row["modifier_noun"]:
        return f"modifier not found: {row['modifier']!r} not in modifier_noun {row['modifier_noun']!r}"
    for prompt in ("noun_only", "modifier_noun"):
        if row["noun"] not in row[prompt]:
            return f"noun not found: {row['noun']!r} not in {prompt} {row[prompt]!r}"
    split = row.get("split")
    if split is not None and split not in SPLITS:
        return f"unknown split: {split!r} (expected one of {' '.join(SPLITS)})"
    image = row.get("image")
    if image is not None:
        image_path = (root / image).resolve()
        # resolve() follows symlinks too, so a link inside the folder to a file outside is caught.
        if not allow_outside_images and not image_path.is_relative_to(root.resolve()):
            return (f"image outside the dataset folder: {image!r} resolves to {image_path}, outside {root.resolve()} "
                    "(pass allow_outside_images=True to allow)")
        problem = _image_problem(image_path, check_images)
        if problem:
            return problem
        image = str(image_path)
    return Record(**{**row, "image": image, "split": split or split_of(row["id"], seed)})


def load(
    path: str | Path, strict: bool = False, seed: int = 0, check_images: bool = True,
    encoding: str = "utf-8", allow_outside_images: bool = False,
) -> Dataset:
    """Load a CultureBench folder (or a samples.jsonl / .csv file directly).

    Rows that fail validation are dropped and listed in `Dataset.dropped` (and logged); with
    `strict=True` the first bad row raises `DataError` naming file, line and reason. A file
    with no rows (empty, or a CSV header only) is a `DataError` under `strict`, else a warning.
    Rows without a `split` get the seeded 7:2:1 hash split (`split.split_of`). `check_images`
    opens every image to make sure it decodes (turn off for speed on trusted data).
    `encoding`: the file's text encoding (UTF-8, with or without BOM, by default).
    `allow_outside_images`: accept `image` paths that resolve outside the dataset folder.
    """
    file = _find_file(Path(path))
    root = file.parent
    text = _read_text(file, encoding)
    records: list[Record] = []
    dropped: list[Problem] = []
    seen: dict[str, int] = {}
    n_rows = 0
    for line, row in _rows(file, text):
        n_rows += 1
        result = row if isinstance(row, str) else _validate(row, root, seed, check_images, allow_outside_images)
        if isinstance(result, Record) and result.id in seen:
            result = f"duplicate id: {result.id!r} (first seen on line {seen[result.id]})"
        if isinstance(result, str):
            problem = Problem(str(file), line, result)
            if strict:
                raise DataError(str(problem))
            dropped.append(problem)
            continue
        seen[result.id] = line
        records.append(result)
    dataset = Dataset(records, dropped, str(file))
    if not n_rows:
        what = "a CSV header and no rows" if text.strip() else "nothing (an empty file)"
        msg = f"{file}: holds {what}; a CultureBench file has one sample per row"
        if strict:
            raise DataError(msg)
        warnings.warn(msg, stacklevel=2)
    if dropped:
        log.warning("%s; first: %s", dataset.summary(), dropped[0])
    else:
        log.info("%s", dataset.summary())
    return dataset

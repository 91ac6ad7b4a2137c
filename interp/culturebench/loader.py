"""Read and validate a CultureBench folder (`samples.jsonl` or `samples.csv`)."""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from interp.culturebench.constants import CULTURES, LANGUAGE_TO_CULTURE
from interp.culturebench.errors import DataError
from interp.culturebench.record import OPTIONAL_FIELDS, REQUIRED_FIELDS, SPLITS, Record
from interp.culturebench.split import split_of

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


def _rows(file: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, row dict) per row; a string instead of a dict is a parse error."""
    if file.suffix == ".csv":
        with open(file, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                return
            for row in reader:
                # DictReader puts surplus cells under None; a short row has None values.
                if None in row:
                    yield reader.line_num, "parse error: more cells than header columns"
                    continue
                yield reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}
        return
    with open(file, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
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
    row: dict[str, Any], root: Path, seed: int, check_images: bool
) -> Record | str:
    """A Record, or the reason (prefixed by its kind) why the row is invalid."""
    missing = [k for k in REQUIRED_FIELDS if not isinstance(row.get(k), str) or not row[k]]
    if missing:
        return f"missing field: {', '.join(missing)}"
    unknown = sorted(set(row) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        return f"unknown field: {', '.join(unknown)}"
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
        problem = _image_problem(image_path, check_images)
        if problem:
            return problem
        image = str(image_path)
    return Record(**{**row, "image": image, "split": split or split_of(row["id"], seed)})


def load(
    path: str | Path, strict: bool = False, seed: int = 0, check_images: bool = True
) -> Dataset:
    """Load a CultureBench folder (or a samples.jsonl / .csv file directly).

    Rows that fail validation are dropped and listed in `Dataset.dropped` (and logged); with
    `strict=True` the first bad row raises `DataError` naming file, line and reason. Rows
    without a `split` get the seeded 7:2:1 hash split (`split.split_of`). `check_images`
    opens every image to make sure it decodes (turn off for speed on trusted data).
    """
    file = _find_file(Path(path))
    root = file.parent
    records: list[Record] = []
    dropped: list[Problem] = []
    seen: dict[str, int] = {}
    for line, row in _rows(file):
        result = row if isinstance(row, str) else _validate(row, root, seed, check_images)
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
    if dropped:
        log.warning("%s; first: %s", dataset.summary(), dropped[0])
    else:
        log.info("%s", dataset.summary())
    return dataset

"""The result protocol and its files: `<name>.json` (tables, labels) + `<name>.safetensors` (tensors).

Every result object of interp, sae and circuits follows one protocol (`Result`): `save(folder) ->
Path`, `Type.load(folder)`, `to_markdown(heading=None)` and `plot(path=None) -> Figure`. This
module holds the protocol, the atomic writers, the JSON conversion and the dataclass save/load
every result uses (circuits.results builds on these: the import graph runs circuits -> sae ->
interp). Files are written to a temporary name and renamed, so a reader never sees half a file;
no pickle.

nnsight (0.8) mounts a `save` method on `object` itself when it is imported, so every object
without its own `save` answers `x.save()` with nnsight's "save() was called outside a trace".
A result's `save` is therefore always defined on its class (or on `DataclassResult`), which
comes before `object` in the method lookup; `isinstance(x, Result)` cannot tell (every object
has a `save` then), so tests check the class itself.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import io
import json
import math
import os
import secrets
import shutil
import types
import typing
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np
import torch
from safetensors.torch import load_file, save

from interp.errors import CultureLensError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@runtime_checkable
class Result(Protocol):
    """What every result object offers. `save` writes `folder/<name>.json` (+ `.safetensors`)
    and returns the folder; `load` reads it back equal; `to_markdown` is a Markdown table or
    section, under `heading` (a Markdown heading line, then a blank line) when one is given
    (report sections default to their own heading); `plot` draws a figure, written to `path`
    when given."""

    def save(self, folder: str | Path) -> Path: ...

    @classmethod
    def load(cls, folder: str | Path) -> Self: ...

    def to_markdown(self, heading: str | None = None) -> str: ...

    def plot(self, path: str | Path | None = None) -> Figure: ...


def with_heading(body: str, heading: str | None) -> str:
    """`body` under `heading` (its line, a blank line, then the body); `body` itself for None."""
    return body if heading is None else f"{heading}\n\n{body}"


def jsonable(x: Any) -> Any:
    """Tensors, arrays, dataclasses, paths and non-finite floats to plain JSON values (NaN/inf -> None)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        if hasattr(x, "to_json"):
            return x.to_json()
        return {f.name: jsonable(getattr(x, f.name)) for f in dataclasses.fields(x) if not f.name.startswith("_")}
    if isinstance(x, torch.Tensor):
        return jsonable(x.detach().cpu().tolist())
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        return jsonable(x.tolist())
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def read_json(file: Path, error: type[CultureLensError] = CultureLensError) -> Any:
    """Parse a JSON file; any read, decoding or syntax problem is `error` naming the file (and line)."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{file}: not UTF-8 text (byte {e.start}); JSON config files are UTF-8") from None
    except json.JSONDecodeError as e:
        raise error(f"{file}, line {e.lineno}: invalid JSON ({e.msg})") from None
    except OSError as e:
        raise error(f"{file}: cannot read ({e.strerror or e})") from None



def atomic_write(path: str | Path, write: collections.abc.Callable[[Path], Any]) -> None:
    """The one atomic writer: `write(tmp)` fills a temporary file in the same folder, then
    os.replace puts it at `path`, so readers never see half a file (the old file stays until
    then; the temporary one is removed on any failure). `path`'s folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh random name per write (concurrent writers never share one), created by a plain
    # open, so the file gets the mode the umask gives any other file
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_new(tmp: Path, data: bytes) -> None:
    # O_EXCL: a new file, never another writer's; mode 0o666 & ~umask, as for any other file
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (`atomic_write`)."""
    atomic_write(path, lambda tmp: _write_new(tmp, data))


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically (`atomic_write`), encoded as `encoding`."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_save_file(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file` atomically (`atomic_write`): the file is written straight
    to disk, not assembled in memory first (activation-store shards are large)."""
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def atomic_replace_folder(src: str | Path, dst: str | Path) -> Path:
    """Put the finished folder `src` at `dst` (same file system): an old `dst` is first moved
    aside to `dst.old` and removed after the swap, so `dst` is always a whole folder, the old
    one or the new one (never a mix), and a crash between the two renames leaves `dst.old`."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        old = dst.with_name(dst.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)
    return dst


def result_folder(path: str | Path, name: str) -> Path:
    """The folder a result `name` lives in. The old form, the JSON file itself
    (`folder/<name>.json`), still names its folder, with a DeprecationWarning."""
    path = Path(path)
    if path.name == f"{name}.json":
        warnings.warn(f"{path}: pass the folder ({path.parent}); a result writes {name}.json and "
                      f"{name}.safetensors into it", DeprecationWarning, stacklevel=3)
        return path.parent
    return path


def save_result(folder: str | Path, name: str, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write `folder/name.json` (meta) and `folder/name.safetensors` (tensors); returns the folder."""
    folder = result_folder(folder, name)
    atomic_write_bytes(folder / f"{name}.safetensors",
                       save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"kind": name}))
    atomic_write_bytes(folder / f"{name}.json", (json.dumps(jsonable(meta), indent=1, ensure_ascii=False) + "\n").encode())
    return folder


def load_result(folder: str | Path, name: str, writer: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read back what `save_result` wrote; a missing file names the folder and who writes it."""
    folder = result_folder(folder, name)
    for f in (f"{name}.json", f"{name}.safetensors"):
        if not (folder / f).is_file():
            raise CultureLensError(f"{folder / f}: missing; this folder is written by {writer}")
    return json.loads((folder / f"{name}.json").read_text()), load_file(str(folder / f"{name}.safetensors"))


def save_images(folder: Path, images: collections.abc.Sequence[Any], stem: str, key: str
                ) -> tuple[list[dict[str, str]], dict[str, torch.Tensor]]:
    """PIL images as `folder/<stem>_<i>.png` (written now), other images (arrays, tensors) as
    tensors `<key>.<i>` for the result's safetensors file: (one JSON entry per image, the tensors)."""
    from PIL import Image

    entries: list[dict[str, str]] = []
    tensors: dict[str, torch.Tensor] = {}
    for i, img in enumerate(images):
        if isinstance(img, Image.Image):
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            atomic_write_bytes(folder / f"{stem}_{i}.png", buf.getvalue())
            entries.append({"png": f"{stem}_{i}.png"})
        else:
            tensors[f"{key}.{i}"] = torch.as_tensor(np.asarray(img))
            entries.append({"tensor": f"{key}.{i}"})
    return entries, tensors


def load_images(folder: Path, entries: list[dict[str, str]], tensors: dict[str, torch.Tensor], where: str) -> list[Any]:
    """The images `save_images` wrote: PNGs as PIL images, the others as numpy arrays; `where`
    (the result's JSON file) is named when a PNG or tensor is missing."""
    from PIL import Image

    images: list[Any] = []
    for i, e in enumerate(entries):
        if "png" in e:
            if not (folder / e["png"]).is_file():
                raise CultureLensError(f"{folder / e['png']}: missing; image {i} of {where}")
            with Image.open(folder / e["png"]) as im:
                im.load()
                images.append(im.copy())
        elif e.get("tensor") in tensors:
            images.append(tensors[e["tensor"]].numpy())
        else:
            raise CultureLensError(f"{where}: image {i} names tensor {e.get('tensor')!r}, which the safetensors "
                                   "file beside it lacks")
    return images


# -- dataclass results: fields to JSON + safetensors and back ---------------------------------

def _leaves(obj: Any, prefix: str = "") -> collections.abc.Iterator[tuple[str, Any]]:
    """(dotted path, value) of every leaf inside `obj`: dataclass fields, dict values, list items."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items: Any = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    elif isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        yield prefix.rstrip("."), obj
        return
    for k, v in items:
        yield from _leaves(v, f"{prefix}{k}.")


def tensor_fields(obj: Any) -> dict[str, torch.Tensor]:
    """Every tensor inside `obj`, keyed by its dotted path from `obj` (e.g. "encoders.text.per_pair"):
    what goes into the safetensors file."""
    return {p: v for p, v in _leaves(obj) if isinstance(v, torch.Tensor)}


def nonfinite_floats(obj: Any) -> dict[str, str]:
    """Every NaN / ±inf float inside `obj` by dotted path ("nan", "inf", "-inf"): JSON writes them
    as null, so a result's file lists them under "_nonfinite" and `load` puts them back."""
    return {p: repr(float(v)) for p, v in _leaves(obj) if isinstance(v, float) and not math.isfinite(v)}


@dataclasses.dataclass
class Stored:
    """What a result's files hold beside its JSON record, by dotted path: `tensors` (the
    safetensors file) and `nonfinite` floats; `where` names the JSON file in errors."""

    tensors: dict[str, torch.Tensor]
    nonfinite: dict[str, str]
    where: str

    @classmethod
    def of(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], where: str) -> Stored:
        """For a record read back: its "_nonfinite" list (see `record`) and the tensors."""
        return cls(tensors, meta.get("_nonfinite") or {}, where)


def from_jsonable(tp: Any, value: Any, path: str, stored: Stored) -> Any:
    """A JSON value back to the annotated type `tp`: dataclasses (by their fields), lists, tuples,
    dicts (int keys restored), Optional, Path; tensors and non-finite floats from `stored` by
    their dotted `path`. Other values are returned as they are."""
    key = path.rstrip(".")
    if key in stored.nonfinite:
        return float(stored.nonfinite[key])
    if key in stored.tensors:
        return stored.tensors[key]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_fields(tp, value, path, stored)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if value is None and len(rest) < len(args):
            return None
        return from_jsonable(rest[0] if len(rest) == 1 else Any, value, path, stored)
    if isinstance(value, list):
        if origin is tuple:
            kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args) or [Any] * len(value)
            return tuple(from_jsonable(k, v, f"{path}{i}.", stored) for i, (k, v) in enumerate(zip(kinds, value)))
        item = args[0] if origin in (list, collections.abc.Sequence) and args else Any
        return [from_jsonable(item, v, f"{path}{i}.", stored) for i, v in enumerate(value)]
    if isinstance(value, dict):
        k_type, item = args if origin in (dict, collections.abc.Mapping) and args else (Any, Any)
        return {(int(k) if k_type is int else k): from_jsonable(item, v, f"{path}{k}.", stored) for k, v in value.items()}
    if tp is Path and isinstance(value, str):
        return Path(value)
    if tp is float and value is None:  # a record written before "_nonfinite": jsonable's NaN
        return math.nan
    return value


def from_fields(cls: type, data: Any, path: str, stored: Stored) -> Any:
    """A dataclass from its JSON record (`from_jsonable` per field). Keys that are not init
    fields (computed properties in `to_json`) are ignored."""
    if not isinstance(data, dict):
        raise CultureLensError(f"{stored.where}: {path.rstrip('.') or 'the record'} should be a {cls.__name__} "
                               f"(a JSON object), got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{path}{f.name}"
        if f.name in data or key in stored.tensors:
            kw[f.name] = from_jsonable(hints.get(f.name, Any), data.get(f.name), f"{key}.", stored)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise CultureLensError(f"{stored.where}: no {key!r}, which {cls.__name__} needs; the file is not a "
                                   f"{cls.__name__} record (or an older one)")
    return cls(**kw)


def record(obj: Any) -> dict[str, Any]:
    """The JSON a result saves: its `to_json()` (or its fields), plus "_nonfinite" when it holds NaN/inf."""
    meta = jsonable(obj)
    nonfinite = nonfinite_floats(obj)
    return {**meta, "_nonfinite": nonfinite} if nonfinite else meta


def require_keys(meta: Any, keys: collections.abc.Iterable[str], where: str, kind: str) -> None:
    """A `kind` record read by hand must have `keys`: else an error naming the file `where` and
    the keys missing (as `from_fields` does for dataclass results)."""
    if not isinstance(meta, dict):
        raise CultureLensError(f"{where}: should hold a {kind} record (a JSON object), got {type(meta).__name__}")
    missing = [k for k in keys if k not in meta]
    if missing:
        raise CultureLensError(f"{where}: no {', '.join(map(repr, missing))}, which {kind} needs; the file is not "
                               f"a {kind} record (or an older one)")


def restore_nonfinite(meta: dict[str, Any], where: str) -> dict[str, Any]:
    """A record read back with its NaN / ±inf floats put back where its "_nonfinite" list (see
    `record`) says; for results that read their JSON by hand rather than by `from_fields`."""
    meta = dict(meta)
    nonfinite = meta.pop("_nonfinite", None) or {}
    return from_jsonable(Any, meta, "", Stored({}, nonfinite, where)) if nonfinite else meta


class DataclassResult:
    """`save`/`load` for a dataclass result: its `to_json()` (the record a report's results.json
    holds, if it has one) as `<result_name>.json`, its tensor fields as `<result_name>.safetensors`.
    Defined on the class, so nnsight's `object.save` never shadows it."""

    result_name: ClassVar[str]

    def save(self, folder: str | Path) -> Path:
        """`folder/<result_name>.json` + `.safetensors`; returns the folder."""
        return save_result(folder, self.result_name, self.saved_record(), tensor_fields(self))

    def saved_record(self) -> dict[str, Any]:
        """The JSON `save` writes: `record(self)`. A result whose `to_json` (the record reports
        embed) leaves out fields that `load` needs adds them here."""
        return record(self)

    @classmethod
    def load(cls, folder: str | Path) -> Self:
        """Read back what `save` wrote, equal to it (NaN and inf included)."""
        folder = result_folder(folder, cls.result_name)
        meta, t = load_result(folder, cls.result_name, f"{cls.__name__}.save")
        return from_fields(cls, meta, "", Stored.of(meta, t, str(folder / f"{cls.result_name}.json")))

"""Reading the inputs of the circuits commands: a model, prompt pairs, a judge, saved units."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any, Callable

import interp
from interp.errors import CultureLensError

from interp.model.tiny import parse_spec as parse_tiny_spec

from circuits.organism.shipped import is_shipped_code


def load_pipeline(path: str | Path, device: str = "cpu", trust_remote_code: bool = False, **load_kwargs: Any) -> Any:
    """`interp.load` of a pipeline folder, running a folder's own pipeline.py only by opt-in.

    The shipped organism, or any folder whose code is byte-identical to it
    (`circuits.organism.shipped.is_shipped_code`), loads without the flag; any other folder that
    brings code needs `trust_remote_code=True` (`--trust-remote-code`)."""
    path = Path(path)
    trusted = trust_remote_code or is_shipped_code(path)
    if not trusted and _brings_code(path):
        raise CultureLensError(f"{path}: this pipeline folder brings its own Python code "
                               f"({', '.join(sorted(str(p.relative_to(path)) for p in path.rglob('*.py'))) or 'model_index.json names a custom class'}) "
                               f"that differs from the shipped organism's; pass --trust-remote-code "
                               f"(trust_remote_code=True) to run it, only for folders you trust")
    return interp.load(path, device=device, trust_remote_code=trusted, **load_kwargs)


def _brings_code(path: Path) -> bool:
    """A custom pipeline class in model_index.json, or any .py file in the folder."""
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # interp.load reports a missing or broken index with its own message
    return (isinstance(index, dict) and isinstance(index.get("_class_name"), list)) or any(path.rglob("*.py"))


def load_model(spec: str, device: str = "cpu", trust_remote_code: bool = False) -> Any:
    """`tiny:<family>[:<layers>]` (a random offline pipeline) or a pipeline folder (see
    `load_pipeline`: a folder with its own code needs `trust_remote_code` unless it is the
    shipped organism's)."""
    if spec.startswith("tiny:"):
        family, layers = parse_tiny_spec(spec)
        return interp.tiny(family, text_layers=layers)
    return load_pipeline(spec, device, trust_remote_code)


def load_records(spec: str, split: str | None = None, limit: int | None = None, seed: int = 0) -> list[Any]:
    """`bundled`, `bundled_ood`, or a CultureBench folder / samples file; `split` filters;
    `limit` keeps the first n records per culture (canonical id order) for quick runs."""
    from circuits.data import culturebench

    if spec == "bundled":
        recs = culturebench.bundled(seed)
    elif spec == "bundled_ood":
        recs = culturebench.bundled_ood(seed)
    else:
        recs = list(culturebench.load(spec, seed=seed).records)
    if split is not None:
        from circuits.pairs import take_split

        recs = take_split(recs, split, f"from {spec!r}")
    if limit is not None:
        by: dict[str, list] = {}
        for r in sorted(recs, key=lambda r: r.id):
            if len(by.setdefault(r.culture, [])) < limit:
                by[r.culture].append(r)
        recs = [r for v in by.values() for r in v]
    if not recs:
        raise CultureLensError(f"no records in {spec!r}" + (f" split {split!r}" if split else ""))
    return recs


def load_judge(spec: str, device: str = "cpu") -> Callable:
    """`clip:PATH`, `vlm:PATH`, `py:FILE.py:FACTORY[:ARG]` or `module.name:FACTORY[:ARG]`: a
    factory (a dotted attribute, e.g. `CultureWorldJudge.load`) called with ARG if given, else
    with no arguments, returning a callable images -> [N, 16] probabilities. The organism's judge:
    `circuits.organism.judge:CultureWorldJudge.load:circuits/organism/assets/cultureworld/judge`."""
    from circuits.data import judges

    kind, _, rest = spec.partition(":")
    if kind == "clip":
        return judges.clip(rest, device=device)
    if kind == "vlm":
        return judges.vlm(rest, device=device)
    if kind == "py":
        file, _, fn = rest.partition(".py:")
        file += ".py"
        if not Path(file).is_file():
            raise CultureLensError(f"judge {spec!r}: no file {file!r}")
        mod_spec = importlib.util.spec_from_file_location(Path(file).stem, file)
        mod = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(mod)
        return _factory(mod, fn, spec)
    if rest:
        try:
            mod = importlib.import_module(kind)
        except ImportError as e:
            raise CultureLensError(f"judge {spec!r}: cannot import {kind!r}: {e}") from e
        return _factory(mod, rest, spec)
    raise CultureLensError(f"judge {spec!r}: expected clip:PATH, vlm:PATH, py:FILE.py:FACTORY or module:FACTORY")


def _factory(mod: Any, name: str, spec: str) -> Callable:
    name, _, arg = name.partition(":")
    fn: Any = mod
    for part in name.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise CultureLensError(f"judge {spec!r}: {mod.__name__} has no {name!r}")
    return fn(arg) if arg else fn()


def load_sae(path: str | None) -> Any:
    if path is None:
        return None
    import sae

    return sae.load_saelens(path)


def load_units(folder: str, sae_path: str | None = None) -> Any:
    from circuits.locate.units import CultureUnits

    return CultureUnits.load(folder, sae=load_sae(sae_path))


def load_layer_saes(specs: list[str] | None) -> dict[int, Any] | None:
    """`LAYER=PATH` (one per layer) -> {layer: SAE}; None when no SAE is given (MLP neurons)."""
    if not specs:
        return None
    out = {}
    for s in specs:
        layer, sep, path = s.partition("=")
        if not sep or not layer.strip().isdigit():
            raise CultureLensError(f"--sae {s!r}: expected LAYER=PATH (e.g. 0=out/sae_layer0)")
        if int(layer) in out:
            raise CultureLensError(f"--sae: layer {layer} given twice")
        out[int(layer)] = load_sae(path)
    return out

"""Argument checks at the public boundary: integers, index lists, finite numbers, prompt lists.

Why one module: the same argument (a step index, a position, a unit index) reaches the engine
through several entry points (`Mask`, `Amplify`, `sae.Steer`, `generate`, `patch`), and each
must refuse the same bad values with the same message. Messages name the argument and the valid
range and never print a tensor (its repr can run to pages).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch

from interp.errors import CultureLensError, MovedArgumentError, RenamedArgumentError

F = TypeVar("F", bound=Callable[..., Any])

# The one argument grammar of "steps" (culturelens 0.2.0): `num_steps` is how many denoising
# steps a generation runs, `steps` only ever lists denoising-step indices (on interventions,
# `patch`, `attribution`, `splice`, feature maps), `train_steps` is how many training iterations.
_MEANING = {"num_steps": "the number of denoising steps", "train_steps": "the number of training steps"}

_SHOW = 8  # how many offending values a message lists


def is_int(x: Any) -> bool:
    """An integer that is not a bool: Python and numpy integers, 0-d integer tensors."""
    if torch.is_tensor(x):
        return x.ndim == 0 and x.dtype != torch.bool and not (x.is_floating_point() or x.is_complex())
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def describe(x: Any) -> str:
    """A short description of a value for a message: its repr when small, else its type and shape."""
    if torch.is_tensor(x):
        return repr(x.item()) if x.numel() == 1 else f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    shape, size = getattr(x, "shape", None), getattr(x, "size", None)
    if isinstance(shape, tuple) and isinstance(size, int) and size > 1:  # numpy arrays
        return f"an array of shape {shape}"
    text = repr(x)
    return text if len(text) <= 60 else f"{type(x).__name__} {text[:57]}..."


def _show(values: Sequence[Any]) -> str:
    shown = ", ".join(describe(v) for v in list(values)[:_SHOW])
    return f"[{shown}{', ...' if len(values) > _SHOW else ''}]"


def index_list(values: Any, what: str) -> list[int]:
    """`values` (a list, tuple, range, array or integer tensor of indices) as a list of ints.

    A lone integer is refused: `steps=5` reads as "5 steps" as easily as "step 5", so the caller
    must say `[5]` or `range(5)`. Floats (1.5 would be truncated), bools (a mask is not a list of
    indices) and strings are refused too. `what` names the argument in the message."""
    if is_int(values):
        raise CultureLensError(f"{what}: got the integer {int(values)}, but it takes a list of indices; "
                               f"pass [{int(values)}] for that one index or range({int(values)}) for the first "
                               f"{int(values)}")
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise CultureLensError(f"{what}: expected a list of integer indices, got {describe(values)}")
    if torch.is_tensor(values):
        if values.dtype == torch.bool or values.is_floating_point() or values.is_complex():
            raise CultureLensError(f"{what}: expected integer indices, got a {values.dtype} tensor (for a mask use "
                                   ".nonzero().flatten())")
        return [int(v) for v in values.reshape(-1).tolist()]
    items = list(values)
    bad = [v for v in items if not is_int(v)]
    if bad:
        raise CultureLensError(f"{what}: indices must be integers (not floats or bools), got {_show(bad)}")
    return [int(v) for v in items]


def check_range(indices: Sequence[int], n: int, what: str, negative: bool = False) -> None:
    """Refuse indices outside 0..n-1 (or -n..n-1 with `negative`, Python's counting from the end)."""
    lo = -n if negative else 0
    bad = [i for i in indices if not lo <= i < n]
    if bad:
        valid = f"{-n}..{n - 1}" if negative else f"0..{n - 1}"
        raise CultureLensError(f"{what}: {_show(bad)} out of range; valid are {valid} (length {n})")


def finite_number(x: Any, what: str) -> float:
    """`x` as a float; refuses bools, strings, non-scalars, NaN and ±inf."""
    if torch.is_tensor(x) and x.numel() == 1:
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise CultureLensError(f"{what}: expected a finite number, got {describe(x)}")
    value = float(x)
    if not math.isfinite(value):
        raise CultureLensError(f"{what}: must be finite, got {value!r}")
    return value


def positive_int(x: Any, what: str, minimum: int = 1) -> int:
    """`x` as an int ≥ `minimum`; refuses floats (no silent truncation), bools and strings."""
    if not is_int(x):
        raise CultureLensError(f"{what}: expected an integer ≥ {minimum}, got {describe(x)}")
    if int(x) < minimum:
        raise CultureLensError(f"{what}: must be ≥ {minimum}, got {int(x)}")
    return int(x)


def prompt_list(prompts: Any, what: str) -> list[str]:
    """One prompt (a str) or a sequence of str, as a list; anything else names its index and type."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, (bytes, Mapping)) or not hasattr(prompts, "__iter__"):
        raise CultureLensError(f"{what}: prompts must be a string or a list of strings, got {describe(prompts)}")
    items = list(prompts)
    bad = [(i, p) for i, p in enumerate(items) if not isinstance(p, str)]
    if bad:
        listed = "; ".join(f"prompt {i} is {type(p).__name__} {describe(p)}" for i, p in bad[:_SHOW])
        raise CultureLensError(f"{what}: prompts must be strings: {listed}")
    return items


def renamed(**old_to_new: str) -> Callable[[F], F]:
    """Decorate a public function whose keyword `old` became `new` in 0.2.0
    (`@renamed(steps="num_steps")`): a call that still passes `old=` raises a
    `RenamedArgumentError` (a TypeError) naming `new`, where Python would say only "unexpected
    keyword" or a `**kwargs` would carry it on (to a diffusers pipeline that ignores it). The
    signature is kept (`inspect.signature` follows `__wrapped__`)."""
    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old in kwargs:
                    what = _MEANING.get(new, new)
                    note = (" steps= now only lists denoising-step indices, on interventions (e.g. "
                            "Mask(units, steps=[0, 3]))" if old == "steps" else "")
                    into = getattr(wrapper, "__moved__", {}).get(new)
                    if into is not None:  # the new name then moved on into a settings object (`moved`)
                        cls, param = into
                        note += (f"{'.' if note else ''} {new} is now a field of {cls}: pass {param}={cls}({new}="
                                 f"{describe(kwargs[old])}).")
                    raise RenamedArgumentError(f"{fn.__qualname__}: {old}= was renamed {new}= in culturelens 0.2.0 "
                                               f"({what}); got {old}={describe(kwargs[old])}.{note}")
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def public_name(obj: Any) -> str:
    """How a user reaches `obj`: its top-level package and name (`sae.TrainConfig`), the form the
    settings classes are exported in."""
    return f"{obj.__module__.partition('.')[0]}.{obj.__qualname__}"


def moved(into: type, *names: str, param: str, where: str | None = None) -> Callable[[F], F]:
    """Decorate a public function whose keywords `names` moved in culturelens 0.2.0 into the
    settings dataclass `into`, now passed as `param=`
    (`@moved(TrainConfig, "lr", "seed", param="cfg", where="sae.train")`).

    A call that still passes one of them raises `MovedArgumentError` (a TypeError, as Python's
    own "unexpected keyword" is) naming `into` and showing the call to write: "sae.train: lr=
    moved to sae.TrainConfig(lr=...) in culturelens 0.2.0; pass cfg=sae.TrainConfig(lr=0.001)".
    So do the old calls by position: more positional arguments than the function now takes
    (the moved ones followed them in the old signature), or a `param` that is neither an `into`
    nor None (e.g. sae.train's old third argument, batch_size). `where` names the function in
    the messages (default: its qualified name). The signature is kept (`inspect.signature`
    follows `__wrapped__`), and `renamed` outside this decorator says where a renamed keyword
    moved on to (`steps=` -> `num_steps` -> a field of `circuits.ScoreSettings`)."""
    fields = {f.name for f in dataclasses.fields(into)}
    stray = [n for n in names if n not in fields]
    if stray or not names:
        raise TypeError(f"moved: {stray or 'no names'} are not fields of {into.__qualname__}")
    cls = public_name(into)

    def decorate(fn: F) -> F:
        name = where or fn.__qualname__
        params = list(inspect.signature(fn).parameters.values())
        positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if param not in {p.name for p in params} or any(p.kind is p.VAR_POSITIONAL for p in params):
            raise TypeError(f"moved: {fn.__qualname__} needs a `{param}` parameter and no *args")
        at = positional.index(param) if param in positional else None

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = [n for n in names if n in kwargs]
            if given:
                call = ", ".join(f"{n}={describe(kwargs[n])}" for n in given)
                raise MovedArgumentError(
                    f"{name}: {', '.join(f'{n}=' for n in given)} moved to {cls}({given[0]}=...) in culturelens "
                    f"0.2.0; pass {param}={cls}({call})")
            if len(args) > len(positional):
                raise MovedArgumentError(
                    f"{name}: takes at most {len(positional)} positional arguments ({', '.join(positional)}), got "
                    f"{len(args)}; {', '.join(names)} moved to {cls} in culturelens 0.2.0: pass {param}={cls}("
                    f"{names[0]}=...) and the other arguments by keyword")
            value = kwargs[param] if param in kwargs else args[at] if at is not None and at < len(args) else None
            if value is not None and not isinstance(value, into):
                raise MovedArgumentError(
                    f"{name}: {param} must be a {cls} or None; got {describe(value)} ({', '.join(names)} moved to "
                    f"{cls} in culturelens 0.2.0: pass {param}={cls}({names[0]}=...))")
            return fn(*args, **kwargs)

        # read by `renamed` (outside) to say where a renamed keyword moved on to
        wrapper.__moved__ = {**getattr(fn, "__moved__", {}), **{n: (cls, param) for n in names}}  # type: ignore
        return wrapper  # type: ignore[return-value]

    return decorate

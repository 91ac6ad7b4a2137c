"""One switch for the progress bars of a long call.

Long functions (`circuits.culture_layer_scan`, `circuits.culture_units`, `circuits.validate_units`,
the λ sweep, specificity, the causal sweep, ...) take `progress: bool = True`; their loops, and the
loops of every helper they call, draw their bars with `bar(...)`, which is silent while any
enclosing call said `progress=False`. Why a context variable and not a parameter threaded
through every helper: the bars sit three or four calls deep (scoring, generation batches), and a
switch that a helper forgets to pass on is a bar that cannot be turned off.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

_ON: contextvars.ContextVar[bool] = contextvars.ContextVar("culturelens_progress", default=True)
F = TypeVar("F", bound=Callable[..., Any])


def enabled() -> bool:
    """Whether bars are drawn here (False inside any `progress=False` call)."""
    return _ON.get()


@contextlib.contextmanager
def shown(on: bool) -> Iterator[None]:
    """Bars drawn inside the block only if `on` and every enclosing switch is on."""
    token = _ON.set(bool(on) and _ON.get())
    try:
        yield
    finally:
        _ON.reset(token)


def bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """`tqdm(iterable, **kwargs)`, disabled when the switch is off (or `disable=True`)."""
    kwargs["disable"] = bool(kwargs.get("disable", False)) or not _ON.get()
    return tqdm(iterable, **kwargs)


def switch(fn: F) -> F:
    """Decorate a function that has a `progress: bool` parameter: its value switches every bar
    drawn during the call."""
    sig = inspect.signature(fn)
    if "progress" not in sig.parameters:
        raise TypeError(f"{fn.__qualname__}: @progress.switch needs a `progress` parameter")
    default = sig.parameters["progress"].default

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        on = sig.bind_partial(*args, **kwargs).arguments.get("progress", default)
        with shown(on):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]

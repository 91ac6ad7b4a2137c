"""The bad-input inventory's one classifier (tests/system/test_boundary_*.py). Not a test file."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from interp.errors import CultureLensError


def outcome(fn: Callable[[], Any], pattern: str) -> tuple[str, BaseException | None]:
    """"clear" (a CultureLensError matching `pattern`), "misleading" (one that does not), "raw"
    (any other exception) or "silent" (no error at all)."""
    try:
        fn()
    except CultureLensError as e:
        return ("clear" if re.search(pattern, str(e)) else "misleading"), e
    except Exception as e:  # noqa: BLE001 - classifying is the point
        return "raw", e
    return "silent", None

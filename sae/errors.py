"""Errors of the `sae` package (subclasses of the project's CultureLensError)."""

from __future__ import annotations

try:
    from interp.errors import CultureLensError
except ImportError:  # interp's core may not ship errors.py yet; keep the ValueError contract.
    class CultureLensError(ValueError):  # type: ignore[no-redef]
        """Fallback base: the contract says CultureLensError is a ValueError subclass."""


class SAEError(CultureLensError):
    """Bad SAE input, config, store or file; the message names what and where."""

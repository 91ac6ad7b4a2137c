"""Errors of the data loader."""

from __future__ import annotations

from interp.errors import CultureLensError


class DataError(CultureLensError):
    """A CultureBench file or row is invalid; the message names file, line and field."""

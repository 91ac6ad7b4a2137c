"""Errors raised by culturelens: each names what was wrong and where."""

from __future__ import annotations


class CultureLensError(ValueError):
    """Base class of every culturelens error (a ValueError, so callers may catch either)."""


class NotAPipelineError(CultureLensError):
    """A path that is not a diffusers pipeline folder (no readable model_index.json)."""


class UnsupportedModelError(CultureLensError):
    """A pipeline or component class that culturelens cannot name sites for."""


class SiteError(CultureLensError):
    """An unknown site name, layer, or unit index; the message lists the valid ones."""


class PromptTooLongError(CultureLensError):
    """A prompt that the tokenizer would truncate; names the prompt index and lengths."""


class RenamedArgumentError(CultureLensError, TypeError):
    """A keyword argument renamed in culturelens 0.2.0 (e.g. a denoising count `steps=` that is
    now `num_steps=`); the message names the new one. A TypeError too, as Python's own error for
    an unknown keyword is."""


class MovedArgumentError(RenamedArgumentError):
    """A keyword argument that moved into a settings object in culturelens 0.2.0 (e.g.
    `sae.train(..., lr=1e-3)`, now `sae.train(..., sae.TrainConfig(lr=1e-3))`); the message names
    the object and shows the call to write. A `RenamedArgumentError`, hence a TypeError too."""

"""culturelens `interp`: load diffusers pipelines, name their sites, trace and intervene."""

from __future__ import annotations

import logging as _logging


class _QuietTorchvisionFallback(_logging.Filter):
    """transformers 5 says, on every import of a pipeline, that CLIP/SigLIP image processors fall
    back to their PIL versions without torchvision. culturelens never feeds images through them
    (they belong to safety checkers and IP adapters), so the notice is noise; other messages pass."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back" not in record.getMessage()


_logging.getLogger("transformers.utils.import_utils").addFilter(_QuietTorchvisionFallback())

from .capture import capture, encoder_output, mean_activation
from .errors import (CultureLensError, NotAPipelineError, PromptTooLongError, SiteError,
                     UnsupportedModelError)
from .interventions import Amplify, Intervention, Mask, OnRows, Replace, Units, intervene, random_units
from .generation import Generation, capture_generation, generate
from .loading import load
from .model import Model, TextEncoder
from .patching import PatchResult, patch
from .attribution import AttributionMaps, EffectMap, attribution, effect_map
from .tiny import tiny

__all__ = [
    "Model", "TextEncoder", "tiny", "load", "generate", "capture_generation", "Generation", "patch",
    "PatchResult", "attribution", "AttributionMaps", "effect_map", "EffectMap", "capture", "encoder_output", "mean_activation",
    "Intervention", "Units", "Mask", "Amplify", "Replace", "OnRows", "random_units", "intervene",
    "CultureLensError", "NotAPipelineError", "PromptTooLongError", "SiteError", "UnsupportedModelError",
]

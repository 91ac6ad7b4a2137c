"""culturelens `interp`: load diffusers pipelines, name their sites, trace and intervene."""

from __future__ import annotations

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

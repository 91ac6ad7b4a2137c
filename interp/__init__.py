"""culturelens `interp`: load diffusers pipelines, name their sites, trace and intervene.

Concept-neutral, and laid out in the order of the data flow:
- `interp.model`: `model` (Model, TextEncoder), `layout` (architecture layouts), `sites` (the site
  grammar), `folders` / `loading` (open a pipeline folder), `tiny` and `tokenizer_training`;
- `interp.interventions`: the intervention types (Units, Mask, Amplify, Replace, OnRows, random_units);
- `interp.engine`: `apply` (the apply rules), `attention` (attention processors), `session` (the
  hook session behind `intervene`, `generate` and generation-time capture);
- `interp.methods`: `capture`, `generation`, `patching`, `attribution`, `heatmaps`, `spans`;
- shared low modules: `errors`, `checks`, `progress`, `result_io`, `checkpoint`, `folder_lock`,
  `controls`, `images`, `fidelity`; infrastructure: `zoo`, `distributed`, `bridge`; `cli`, `demo`.
The culture data and its evaluation live in `circuits` (`circuits.data`, `circuits.stats`)."""

from __future__ import annotations

import logging as _logging


class _QuietTorchvisionFallback(_logging.Filter):
    """transformers 5 says, on every import of a pipeline, that CLIP/SigLIP image processors fall
    back to their PIL versions without torchvision. culturelens never feeds images through them
    (they belong to safety checkers and IP adapters), so the notice is noise; other messages pass."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back" not in record.getMessage()


_logging.getLogger("transformers.utils.import_utils").addFilter(_QuietTorchvisionFallback())

# In the order of the data flow: the model and its sites, the interventions and the engine that
# applies them, then the methods that read and edit through it.
from interp.errors import (CultureLensError, MovedArgumentError, NotAPipelineError, PromptTooLongError,
                           RenamedArgumentError, SiteError, UnsupportedModelError)
from interp.model.model import Model, TextEncoder
from interp.model.loading import load
from interp.model.tiny import tiny
from interp.interventions import Amplify, Intervention, Mask, OnRows, Replace, Units, random_units
from interp.engine.session import intervene
from interp.methods.capture import capture, encoder_output, mean_activation
from interp.methods.generation import Generation, capture_generation, generate
from interp.methods.patching import PatchResult, patch
from interp.methods.attribution import AttributionMaps, EffectMap, attribution, effect_map

__all__ = [
    "Model", "TextEncoder", "tiny", "load", "generate", "capture_generation", "Generation", "patch",
    "PatchResult", "attribution", "AttributionMaps", "effect_map", "EffectMap", "capture", "encoder_output", "mean_activation",
    "Intervention", "Units", "Mask", "Amplify", "Replace", "OnRows", "random_units", "intervene",
    "CultureLensError", "MovedArgumentError", "NotAPipelineError", "PromptTooLongError", "RenamedArgumentError",
    "SiteError", "UnsupportedModelError",
]

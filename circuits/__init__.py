"""The culture analyses: culture-layer scan (Delta-CA), culture units (WFS), mask-vs-random
validation, zero-training amplifier, fine-tuned layer enhancer and the exhaustive causal sweep.
The judged steps share one settings object, `ScoreSettings` (seed, num_steps, batch_size,
n_boot); the enhancer trains by an `EnhancerConfig`.

Every function takes an `interp.Model` and prompt pairs of any concept (modifier + noun)."""

from circuits.locate.wfs import wfs, elbow, noun_filter, select_units
from circuits.pairs import PromptPair, as_pairs, by_concept
from circuits.locate.ca import DirectionMaskedError
from circuits.locate.scan import culture_layer_scan, LayerScan, EncoderScan
from circuits.locate.units import culture_units, CultureUnits, CultureUnitSet, UnitBasis, neuron_basis, sae_basis, sae_or_neurons
from circuits.results import Rate
from circuits.evaluate import ScoreSettings
from circuits.causal.edits import scale_units
from circuits.causal.amplify import amplify, lambda_sweep, LambdaSweep
from circuits.causal.validate import validate_units, Validation
from circuits.causal.enhancer import LayerEnhancer, EnhancerConfig, train_enhancer, EnhancerRun, random_other_layer
from circuits.causal.sweep import causal_sweep, CausalSweep

__all__ = [
    "wfs", "elbow", "noun_filter", "select_units", "PromptPair", "as_pairs", "by_concept",
    "DirectionMaskedError", "culture_layer_scan", "LayerScan", "EncoderScan",
    "culture_units", "CultureUnits", "CultureUnitSet", "UnitBasis", "neuron_basis", "sae_basis",
    "amplify", "lambda_sweep", "LambdaSweep", "scale_units", "Rate", "ScoreSettings", "validate_units", "Validation",
    "LayerEnhancer", "EnhancerConfig", "train_enhancer", "EnhancerRun", "random_other_layer", "causal_sweep",
    "CausalSweep",
]

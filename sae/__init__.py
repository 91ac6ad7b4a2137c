"""Top-K sparse autoencoders on any culturelens site: model, activation store, trainer,
quality metrics, SAELens export, feature export and steering."""

from sae.errors import SAEError
from sae.features import export_features
from sae.metrics import downstream_error, evaluate
from sae.model import Codes, SAEConfig, TopKSAE
from sae.saelens import load_saelens, save_saelens
from sae.steer import Steer, splice
from sae.store import ActivationStore
from sae.train import train

__all__ = ["ActivationStore", "Codes", "SAEConfig", "SAEError", "Steer", "TopKSAE",
           "downstream_error", "evaluate", "export_features", "load_saelens", "save_saelens",
           "splice", "train"]

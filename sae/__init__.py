"""Top-K sparse autoencoders on any culturelens site (text encoder or denoiser): model,
activation store, trainer, quality metrics, SAELens export, self-describing feature export,
steering and splicing, and denoiser feature maps."""

from sae.browser import LatentActivations, build_browser
from sae.denoiser import DenoiserCapture
from sae.errors import SAEError
from sae.feature_maps import FeatureMaps, feature_maps
from sae.features import export_features
from sae.metrics import downstream_error, evaluate
from sae.model import Codes, SAEConfig, TopKSAE
from sae.saelens import load_saelens, save_saelens
from sae.steer import SpliceFidelity, Steer, splice, splice_fidelity
from sae.store import ActivationStore
from sae.train import TrainConfig, train

__all__ = ["ActivationStore", "Codes", "DenoiserCapture", "FeatureMaps", "SAEConfig", "SAEError",
           "SpliceFidelity", "Steer", "TopKSAE", "feature_maps", "splice_fidelity",
           "downstream_error", "evaluate", "export_features", "load_saelens", "save_saelens",
           "splice", "train", "TrainConfig"]
__all__ += ["LatentActivations", "build_browser"]

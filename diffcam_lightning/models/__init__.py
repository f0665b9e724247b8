"""LightningModules: joint CE + saliency training."""

from ..cams.classes import CAM_CLASSES
from .backbones import build_backbone
from .classifier import SALIENCY_TARGETS, SaliencyClassifier, as_dict_batch, register_saliency_target
from .sources import LoadedModel, load_model

__all__ = [
    "CAM_CLASSES",
    "SALIENCY_TARGETS",
    "LoadedModel",
    "SaliencyClassifier",
    "as_dict_batch",
    "build_backbone",
    "load_model",
    "register_saliency_target",
]

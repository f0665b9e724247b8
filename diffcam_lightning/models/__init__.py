"""LightningModules: joint CE + saliency training."""

from .backbones import build_backbone
from .classifier import CAM_CLASSES, SALIENCY_TARGETS, SaliencyClassifier, as_dict_batch, register_saliency_target

__all__ = [
    "CAM_CLASSES",
    "SALIENCY_TARGETS",
    "SaliencyClassifier",
    "as_dict_batch",
    "build_backbone",
    "register_saliency_target",
]

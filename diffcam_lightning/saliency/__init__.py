"""Saliency targets and map statistics: SHAMs, CAM entropy, MSE, the saliency loss."""

from . import patterns  # noqa: F401  (registers the patch and random SHAM patterns)
from .losses import resize_target, saliency_loss, saliency_mse
from .metrics import cam_entropy, cam_mse, max_entropy
from .sham import (
    PAPER_ENTROPY,
    SHAM_PATTERNS,
    ShamPattern,
    register_pattern,
    sham_pixel_count,
    sham_target,
    whole_grid_note,
)

__all__ = [
    "PAPER_ENTROPY",
    "SHAM_PATTERNS",
    "ShamPattern",
    "cam_entropy",
    "cam_mse",
    "max_entropy",
    "register_pattern",
    "resize_target",
    "saliency_loss",
    "saliency_mse",
    "sham_pixel_count",
    "sham_target",
    "whole_grid_note",
]

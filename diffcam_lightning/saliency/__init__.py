"""Saliency targets and map statistics: SHAMs, CAM entropy, MSE."""

from .metrics import cam_entropy, cam_mse, max_entropy
from .sham import PAPER_ENTROPY, SHAM_PATTERNS, register_pattern, sham_pixel_count, sham_target

__all__ = [
    "PAPER_ENTROPY",
    "SHAM_PATTERNS",
    "cam_entropy",
    "cam_mse",
    "max_entropy",
    "register_pattern",
    "sham_pixel_count",
    "sham_target",
]

"""diffcam-lightning: saliency-supervised training and CAM auditing for PyTorch Lightning."""

from .cams import METHODS, CAMEngine

__version__ = "0.1.0"

__all__ = ["CAMEngine", "METHODS", "__version__"]

"""diffcam-lightning: saliency-supervised training and CAM auditing for PyTorch Lightning."""

from .cams import METHODS, CAMEngine
from .saliency import cam_entropy, cam_mse, sham_target

__version__ = "0.1.0"

__all__ = ["METHODS", "CAMEngine", "__version__", "cam_entropy", "cam_mse", "sham_target"]

from .data import CSVDataModule, ImageFolderDataModule, SyntheticDataModule
from .models import SaliencyClassifier

__all__ += ["CSVDataModule", "ImageFolderDataModule", "SaliencyClassifier", "SyntheticDataModule"]

from .audit import CAMAudit  # noqa: E402

__all__ += ["CAMAudit"]

"""diffcam-lightning: saliency-supervised training and CAM auditing for PyTorch Lightning."""

from .cams import METHODS, CAMEngine
from .saliency import cam_entropy, cam_mse, sham_target

__version__ = "0.1.0"

__all__ = ["CAMEngine", "METHODS", "cam_entropy", "cam_mse", "sham_target", "__version__"]

from .data import CSVDataModule, ImageFolderDataModule, SyntheticDataModule  # noqa: E402
from .models import SaliencyClassifier  # noqa: E402

__all__ += ["CSVDataModule", "ImageFolderDataModule", "SaliencyClassifier", "SyntheticDataModule"]

from .audit import CAMAudit  # noqa: E402

__all__ += ["CAMAudit"]

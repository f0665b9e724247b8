"""Data: the embedded synthetic shapes, image folders and CSV manifests with saliency maps.

Batches are dicts ``{"image", "label", "saliency", "has_saliency"}``.
"""

from .datamodules import CSVDataModule, ImageFolderDataModule, SyntheticDataModule
from .files import DataError, SaliencyImageDataset, read_manifest
from .shapes import SHAPES, register_shape
from .synthetic import PRESETS, SyntheticShapes, SyntheticSpec, denormalize, render
from .transforms import PairedTransform, timm_data_config

__all__ = [
    "PRESETS",
    "SHAPES",
    "CSVDataModule",
    "DataError",
    "ImageFolderDataModule",
    "PairedTransform",
    "SaliencyImageDataset",
    "SyntheticDataModule",
    "SyntheticShapes",
    "SyntheticSpec",
    "denormalize",
    "read_manifest",
    "register_shape",
    "render",
    "timm_data_config",
]

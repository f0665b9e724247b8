"""LightningDataModules: embedded synthetic shapes, an image folder, a CSV manifest.

All yield dict batches ``{"image": [B, 3, H, W], "label": [B], "saliency": [B, H, W],
"has_saliency": bool [B]}``. ``saliency`` is all zeros where ``has_saliency`` is False
(NaN-free: a mask, not a sentinel). Each exposes ``num_classes`` (and ``classes``), which
the ``diffcam`` CLI links to ``model.num_classes``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .files import (
    SaliencyImageDataset,
    Sample,
    folder_classes,
    manifest_classes,
    manifest_samples,
    read_manifest,
    scan_folder,
)
from .synthetic import PRESETS, SyntheticShapes, SyntheticSpec
from .transforms import PairedTransform, timm_data_config

log = logging.getLogger(__name__)

Item = dict[str, Tensor]  # one sample: image, label, saliency, has_saliency


class _LoaderMixin(LightningDataModule):
    """Shared loaders; subclasses fill ``self.datasets[split]`` in ``setup``."""

    batch_size: int
    num_workers: int
    datasets: dict[str, Dataset[Item]]

    def setup(self, stage: Optional[str] = None) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _loader(self, split: str, shuffle: bool) -> DataLoader[Item]:
        if split not in getattr(self, "datasets", {}):
            self.setup(None)
        if split not in self.datasets:
            raise ValueError(f"{type(self).__name__} has no {split!r} split; available: {', '.join(self.datasets)}.")
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=False,
        )

    def train_dataloader(self) -> DataLoader[Item]:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader[Item]:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader[Item]:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader[Item]:
        return self._loader("predict" if "predict" in self.datasets else "test", shuffle=False)


class SyntheticDataModule(_LoaderMixin):
    """The embedded procedural dataset (no downloads): ``preset="few"`` (7 classes, like
    Iris PAD) or ``"many"`` (100 classes); ``num_classes`` overrides the preset. Sizes are
    chosen to train on a 2-core CPU in minutes. ``cue=True``: the shortcut variant (a small
    square the saliency maps never mark decides the label; ``data/synthetic.py``)."""

    def __init__(
        self,
        preset: str = "few",
        num_classes: Optional[int] = None,
        image_size: int = 64,
        train_size: int = 1400,
        val_size: int = 280,
        test_size: int = 280,
        clutter: int = 4,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        cue: bool = False,
    ) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"Unknown synthetic preset {preset!r}; valid: {', '.join(PRESETS)}.")
        # num_classes is the model's hparam (linked by the CLI); None here would clash with it
        self.save_hyperparameters(ignore=["num_classes"])
        self.spec = SyntheticSpec(
            num_classes=int(num_classes or PRESETS[preset]["num_classes"]),
            image_size=image_size,
            clutter=clutter,
            seed=seed,
            cue=bool(cue),
        )
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.datasets = {}

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def classes(self) -> list[str]:
        from .synthetic import class_shape_and_colour

        return [class_shape_and_colour(self.spec, c)[0] + f"_{c}" for c in range(self.num_classes)]

    def setup(self, stage: Optional[str] = None) -> None:
        if not self.datasets:
            self.datasets = {s: SyntheticShapes(n, s, self.spec) for s, n in self.sizes.items()}


class _FileDataModule(_LoaderMixin):
    """Common parts of the folder and CSV modules: transforms from a timm data config,
    a seeded train/val split when no validation set is given."""

    classes: list[str]  # set by each subclass's __init__

    def __init__(
        self,
        model_name: Optional[str],
        data_config: Optional[dict[str, Any]],
        hflip: bool,
        val_fraction: float,
        batch_size: int,
        num_workers: int,
        seed: int,
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}.")
        self.config = timm_data_config(model_name, data_config)
        self.hflip = hflip
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.datasets = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _split_samples(self) -> dict[str, list[Sample]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, stage: Optional[str] = None) -> None:
        if self.datasets:
            return
        train_tf, eval_tf = PairedTransform(self.config, self.hflip), PairedTransform(self.config, False)
        splits = self._split_samples()
        if "val" not in splits and self.val_fraction > 0:
            samples = splits.pop("train")
            order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(self.seed)).tolist()
            n_val = max(1, round(len(samples) * self.val_fraction))
            splits["val"] = [samples[i] for i in order[:n_val]]
            splits["train"] = [samples[i] for i in order[n_val:]]
        for split, samples in splits.items():
            ds = SaliencyImageDataset(samples, self.classes, train_tf if split == "train" else eval_tf)
            if ds.missing_saliency:
                log.warning("%s split: %d of %d samples have no saliency map.", split, ds.missing_saliency, len(ds))
            self.datasets[split] = ds


class ImageFolderDataModule(_FileDataModule):
    """``train_dir/<class>/<image>`` (and optional ``val_dir``, ``test_dir`` with the same
    classes). Saliency maps, if any, live at ``saliency_dir/<class>/<image stem>.<ext>``
    (greyscale; any image extension). Without ``val_dir``, ``val_fraction`` of the
    training images (seeded) form the validation split."""

    def __init__(
        self,
        train_dir: str,
        val_dir: Optional[str] = None,
        test_dir: Optional[str] = None,
        saliency_dir: Optional[str] = None,
        model_name: Optional[str] = None,
        data_config: Optional[dict[str, Any]] = None,
        hflip: bool = True,
        val_fraction: float = 0.1,
        batch_size: int = 32,
        num_workers: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__(model_name, data_config, hflip, val_fraction, batch_size, num_workers, seed)
        self.save_hyperparameters(ignore=["model_name"])  # the model's hparam; a different value would clash
        self.dirs = {"train": train_dir, "val": val_dir, "test": test_dir}
        self.saliency_dir = saliency_dir
        self.classes = folder_classes(Path(train_dir))

    def _split_samples(self) -> dict[str, list[Sample]]:
        sal = Path(self.saliency_dir) if self.saliency_dir else None
        return {s: scan_folder(Path(d), self.classes, sal) for s, d in self.dirs.items() if d}


class CSVDataModule(_FileDataModule):
    """CSV manifests with a header ``image,label[,saliency]`` (paths relative to ``root``,
    default the manifest's folder; an empty saliency cell = no map). Classes are the train
    manifest's labels (integers 0..N-1, or sorted names) unless ``classes`` is given."""

    def __init__(
        self,
        train_csv: str,
        val_csv: Optional[str] = None,
        test_csv: Optional[str] = None,
        root: Optional[str] = None,
        classes: Optional[Sequence[str]] = None,
        model_name: Optional[str] = None,
        data_config: Optional[dict[str, Any]] = None,
        hflip: bool = True,
        val_fraction: float = 0.1,
        batch_size: int = 32,
        num_workers: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__(model_name, data_config, hflip, val_fraction, batch_size, num_workers, seed)
        self.save_hyperparameters(ignore=["model_name"])  # the model's hparam; a different value would clash
        self.csvs = {"train": train_csv, "val": val_csv, "test": test_csv}
        self.root = root
        self.classes = [str(c) for c in classes] if classes else manifest_classes(read_manifest(Path(train_csv)))

    def _split_samples(self) -> dict[str, list[Sample]]:
        root = Path(self.root) if self.root else None
        return {s: manifest_samples(Path(p), self.classes, root) for s, p in self.csvs.items() if p}

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
from typing import Any, Literal, Optional

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from .files import (
    SaliencyImageDataset,
    Sample,
    folder_classes,
    manifest_classes,
    manifest_samples,
    read_manifest,
    scan_folder,
)
from .synthetic import PRESETS, Split, SyntheticShapes, SyntheticSpec, class_shape_and_colour
from .transforms import PairedTransform, timm_data_config

log = logging.getLogger(__name__)

Item = dict[str, Tensor]  # one sample: image, label, saliency, has_saliency
Preset = Literal["few", "many"]  # the keys of synthetic.PRESETS, listed in ``diffcam fit --help``


class _LoaderMixin(LightningDataModule):
    """Shared loaders; subclasses fill ``self.datasets[split]`` in ``setup``."""

    batch_size: int
    num_workers: int
    datasets: dict[str, Dataset[Item]]

    @override
    def setup(self, stage: Optional[str] = None) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _loader(self, split: str, shuffle: bool) -> DataLoader[Item]:
        if split not in self.datasets:
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

    @override
    def train_dataloader(self) -> DataLoader[Item]:
        return self._loader("train", shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader[Item]:
        return self._loader("val", shuffle=False)

    @override
    def test_dataloader(self) -> DataLoader[Item]:
        return self._loader("test", shuffle=False)

    @override
    def predict_dataloader(self) -> DataLoader[Item]:
        return self._loader("predict" if "predict" in self.datasets else "test", shuffle=False)


class SyntheticDataModule(_LoaderMixin):
    """The embedded procedural dataset: coloured shapes in clutter, each with its exact
    saliency map, so saliency training runs with no download and on a 2-core CPU in minutes.

    Args:
        preset: ``few`` (7 classes, like Iris PAD) or ``many`` (100 classes).
        num_classes: overrides the preset's class count.
        image_size: the images' side in pixels.
        train_size: samples in the train split (likewise ``val_size``, ``test_size``).
        val_size: samples in the validation split.
        test_size: samples in the test split.
        clutter: distractor shapes per image.
        batch_size: the loaders' batch size.
        num_workers: the loaders' worker processes.
        seed: every sample is a pure function of (seed, split, index).
        cue: the shortcut variant: a small square the saliency maps never mark decides the
            label (``data/synthetic.py``).

    Attributes:
        num_classes: the class count (linked to ``model.num_classes`` by the ``diffcam`` CLI).
        classes: the class names, ``<shape>_<index>``.
        spec: the :class:`~diffcam_lightning.data.SyntheticSpec` every sample is drawn from.

    Raises:
        ValueError: an unknown ``preset`` (the message lists the valid ones).

    Example:
        >>> from diffcam_lightning import SyntheticDataModule
        >>> data = SyntheticDataModule(num_classes=3, image_size=32, train_size=6, val_size=3, test_size=3, batch_size=3)
        >>> data.num_classes, data.classes
        (3, ['disk_0', 'square_1', 'triangle_2'])
        >>> batch = next(iter(data.train_dataloader()))
        >>> batch["image"].shape, batch["saliency"].shape, batch["has_saliency"].tolist()
        (torch.Size([3, 3, 32, 32]), torch.Size([3, 32, 32]), [True, True, True])
    """

    def __init__(
        self,
        preset: Preset = "few",
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
        self.sizes: dict[Split, int] = {"train": train_size, "val": val_size, "test": test_size}
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.datasets = {}

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def classes(self) -> list[str]:
        return [class_shape_and_colour(self.spec, c)[0] + f"_{c}" for c in range(self.num_classes)]

    @override
    def setup(self, stage: Optional[str] = None) -> None:
        if not self.datasets:
            self.datasets = {s: SyntheticShapes(n, s, self.spec) for s, n in self.sizes.items()}


class _FileDataModule(_LoaderMixin):
    """Common parts of the folder and CSV modules: one path per split (``sources``; a
    subclass reads one with :meth:`_read_split`), transforms from a timm data config, a
    seeded train/val split when no validation set is given."""

    classes: list[str]  # set by each subclass's __init__

    def __init__(
        self,
        sources: dict[str, Optional[str]],
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
        # Lightning collects the subclass's __init__ arguments too; model_name is the model's
        # hparam (a different value would clash), sources repeats the subclass's paths
        self.save_hyperparameters(ignore=["model_name", "sources"])
        self.sources = sources
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

    def _read_split(self, path: Path) -> list[Sample]:  # pragma: no cover - abstract
        """The samples of one split's folder or manifest."""
        raise NotImplementedError

    @override
    def setup(self, stage: Optional[str] = None) -> None:
        if self.datasets:
            return
        train_tf, eval_tf = PairedTransform(self.config, self.hflip), PairedTransform(self.config, False)
        splits = {split: self._read_split(Path(path)) for split, path in self.sources.items() if path}
        if "val" not in splits and self.val_fraction > 0:
            splits["train"], splits["val"] = self._hold_out(splits["train"])
        for split, samples in splits.items():
            ds = SaliencyImageDataset(samples, self.classes, train_tf if split == "train" else eval_tf)
            if ds.missing_saliency:
                log.warning("%s split: %d of %d samples have no saliency map.", split, ds.missing_saliency, len(ds))
            self.datasets[split] = ds

    def _hold_out(self, samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
        """``(train, val)``: ``val_fraction`` of ``samples`` (at least one), drawn with ``seed``."""
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(self.seed)).tolist()
        n_val = max(1, round(len(samples) * self.val_fraction))
        return [samples[i] for i in order[n_val:]], [samples[i] for i in order[:n_val]]


class ImageFolderDataModule(_FileDataModule):
    """Images in one folder per class, with optional greyscale saliency maps beside them in a
    parallel tree, checked file by file before training starts.

    Args:
        train_dir: ``train_dir/<class>/<image>``; its sorted subfolders are the classes.
        val_dir: a validation folder with the same classes; without it, ``val_fraction`` of
            the training images (seeded) form the validation split.
        test_dir: a test folder with the same classes.
        saliency_dir: ``saliency_dir/<class>/<image stem>.<ext>`` (greyscale, any image
            extension); an image without one trains on CE only and is counted.
        model_name: a timm name whose data config (size, mean, std, crop) the transforms use.
        data_config: overrides of that config (``image_size``, ``mean``, ...).
        hflip: flip training images and their maps together at random.
        val_fraction: the share of training images held out when there is no ``val_dir``.
        batch_size: the loaders' batch size.
        num_workers: the loaders' worker processes.
        seed: the seed of the held-out split.

    Attributes:
        classes: the class names (``train_dir``'s sorted subfolders).
        num_classes: their count (linked to ``model.num_classes`` by the ``diffcam`` CLI).
        config: the resolved timm data config.

    Raises:
        DataError: a missing folder, no images, or a class missing from another split.
        ValueError: ``val_fraction`` outside ``[0, 1)`` or an unknown data config key.

    Example:
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from diffcam_lightning import ImageFolderDataModule
        >>> for name in ("cat", "dog"):
        ...     Path("train", name).mkdir(parents=True)
        ...     for i in range(3):
        ...         Image.new("RGB", (40, 40), (80 * i, 0, 0)).save(f"train/{name}/{i}.png")
        >>> data = ImageFolderDataModule("train", data_config={"image_size": 32}, val_fraction=0.34, num_workers=0)
        >>> data.classes
        ['cat', 'dog']
        >>> data.setup()
        >>> len(data.datasets["train"]), len(data.datasets["val"])
        (4, 2)
        >>> batch = next(iter(data.val_dataloader()))
        >>> batch["image"].shape, batch["has_saliency"].tolist()
        (torch.Size([2, 3, 32, 32]), [False, False])
    """

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
        splits = {"train": train_dir, "val": val_dir, "test": test_dir}
        super().__init__(splits, model_name, data_config, hflip, val_fraction, batch_size, num_workers, seed)
        self.saliency_dir = saliency_dir
        self.classes = folder_classes(Path(train_dir))

    @property
    def dirs(self) -> dict[str, Optional[str]]:
        """The folder of each split (``sources``, under its older name)."""
        return self.sources

    @override
    def _read_split(self, path: Path) -> list[Sample]:
        return scan_folder(path, self.classes, Path(self.saliency_dir) if self.saliency_dir else None)


class CSVDataModule(_FileDataModule):
    """Images listed in CSV manifests, each row with its label and optional saliency map,
    checked row by row before training starts.

    Args:
        train_csv: a manifest with the header ``image,label[,saliency]`` (an empty
            saliency cell = no map: the sample trains on CE only and is counted).
        val_csv: a validation manifest; without it, ``val_fraction`` of the training rows
            (seeded) form the validation split.
        test_csv: a test manifest.
        root: the folder the manifests' paths are relative to (default: each manifest's).
        classes: the class names in label order; default the train manifest's labels
            (integers 0..N-1, or sorted names).
        model_name: a timm name whose data config (size, mean, std, crop) the transforms use.
        data_config: overrides of that config (``image_size``, ``mean``, ...).
        hflip: flip training images and their maps together at random.
        val_fraction: the share of training rows held out when there is no ``val_csv``.
        batch_size: the loaders' batch size.
        num_workers: the loaders' worker processes.
        seed: the seed of the held-out split.

    Attributes:
        classes: the class names in label order.
        num_classes: their count (linked to ``model.num_classes`` by the ``diffcam`` CLI).
        config: the resolved timm data config.

    Raises:
        DataError: a missing manifest or column, a missing file, or an unknown label (the
            message names the file and row).
        ValueError: ``val_fraction`` outside ``[0, 1)`` or an unknown data config key.

    Example:
        >>> import csv
        >>> from PIL import Image
        >>> from diffcam_lightning import CSVDataModule
        >>> rows = [["image", "label", "saliency"]]
        >>> for i, label in enumerate(["cat", "dog", "cat", "dog"]):
        ...     Image.new("RGB", (40, 40), (60 * i, 0, 0)).save(f"{i}.png")
        ...     Image.new("L", (40, 40), 255).save(f"{i}_map.png")
        ...     rows.append([f"{i}.png", label, f"{i}_map.png" if i else ""])  # row 0: no map
        >>> with open("train.csv", "w", newline="") as f:
        ...     csv.writer(f).writerows(rows)
        >>> data = CSVDataModule("train.csv", data_config={"image_size": 32}, val_fraction=0.0, num_workers=0)
        >>> data.classes
        ['cat', 'dog']
        >>> batch = next(iter(data.train_dataloader()))
        >>> batch["image"].shape, int(batch["has_saliency"].sum())
        (torch.Size([4, 3, 32, 32]), 3)
    """

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
        splits = {"train": train_csv, "val": val_csv, "test": test_csv}
        super().__init__(splits, model_name, data_config, hflip, val_fraction, batch_size, num_workers, seed)
        self.root = root
        self.classes = [str(c) for c in classes] if classes else manifest_classes(read_manifest(Path(train_csv)))

    @property
    def csvs(self) -> dict[str, Optional[str]]:
        """The manifest of each split (``sources``, under its older name)."""
        return self.sources

    @override
    def _read_split(self, path: Path) -> list[Sample]:
        return manifest_samples(path, self.classes, Path(self.root) if self.root else None)

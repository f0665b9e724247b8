"""The report's images: the embedded synthetic set, an ImageNet-style folder or a CSV
manifest, reduced to the first ``samples_per_class`` images of every class (the
paper: 5 per class, 5,000 ImageNet validation images)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, get_args

from ..data.files import (
    SaliencyImageDataset,
    folder_classes,
    manifest_classes,
    manifest_samples,
    read_manifest,
    scan_folder,
)
from ..data.synthetic import SyntheticShapes, SyntheticSpec
from ..data.transforms import PairedTransform, timm_data_config
from .scoring import IndexedSubset

Source = Literal["synthetic", "folder", "csv"]
SOURCES: tuple[str, ...] = get_args(Source)


@dataclass
class DataSpec:
    """The report's images (its ``report.data.*`` options).

    Args:
        source: synthetic (the embedded shapes) | folder (``root/<class>/<image>``) | csv
            (``root`` = the manifest, columns ``image,label[,saliency]``).
        root: The folder or the manifest (folder and csv).
        saliency_root: A folder of human saliency maps beside the images (folder).
        samples_per_class: The first images of every class that are scored.
        num_classes: Classes of the synthetic set.
        image_size: Overrides the model's timm input size (and sets the synthetic
            images' size).
        seed: Seed of the synthetic set.
        batch_size: Images per predict batch.
        num_workers: Data loader worker processes.
        label_classes: For a csv whose integer labels are the model's own class indices,
            the model's class count (e.g. 1000 for an ImageNet model), so a few classes
            present still give the full head.

    Raises:
        ValueError: From :func:`build_report_data`: an unknown source, a missing root,
            ``samples_per_class`` < 1.

    Example:
        >>> data = build_report_data(DataSpec(samples_per_class=2, num_classes=3, image_size=32), None)
        >>> len(data.dataset), data.num_classes, data.description
        (6, 3, 'embedded synthetic shapes')
    """

    source: Source = "synthetic"
    root: Optional[str] = None
    saliency_root: Optional[str] = None
    samples_per_class: int = 5
    num_classes: int = 7
    image_size: Optional[int] = None
    seed: int = 0
    batch_size: int = 16
    num_workers: int = 0
    label_classes: Optional[int] = None


@dataclass
class ReportData:
    """The dataset of one architecture, as :func:`build_report_data` gives it.

    Args:
        dataset: The chosen samples (each carries its original ``index``).
        num_classes: The data's class count (the model's head must match).
        description: Where the images come from, for the report.
        class_names: The data's class names in label order (a folder's sorted folder
            names, a csv's sorted label names); ``None`` where the labels are bare indices.
    """

    dataset: IndexedSubset
    num_classes: int
    description: str
    class_names: Optional[list[str]] = None


def _first_per_class(labels: list[int], per_class: int) -> list[int]:
    taken: dict[int, int] = defaultdict(int)
    chosen = []
    for index, label in enumerate(labels):
        if taken[label] < per_class:
            taken[label] += 1
            chosen.append(index)
    return chosen


def _index_classes(classes: list[str], count: int, root: str) -> list[str]:
    """``0..count-1`` for a manifest whose labels are class indices below ``count``."""
    if not all(c.isdigit() and int(c) < count for c in classes):
        raise ValueError(
            f"data.label_classes={count} needs integer labels 0..{count - 1} in {root}; found {classes[:5]}."
        )
    return [str(i) for i in range(count)]


def build_report_data(spec: DataSpec, arch: Optional[str]) -> ReportData:
    """The dataset for one architecture (its timm data config sets size and mean/std)."""
    if spec.source not in SOURCES:
        raise ValueError(f"data.source must be one of {', '.join(SOURCES)}; got {spec.source!r}.")
    if spec.samples_per_class < 1:
        raise ValueError(f"data.samples_per_class must be >= 1; got {spec.samples_per_class}.")
    if spec.source == "synthetic":
        synth = SyntheticSpec(num_classes=spec.num_classes, image_size=spec.image_size or 64, seed=spec.seed)
        shapes = SyntheticShapes(spec.samples_per_class * spec.num_classes, split="test", spec=synth)
        return ReportData(IndexedSubset(shapes, range(len(shapes))), spec.num_classes, "embedded synthetic shapes")
    if spec.root is None:
        raise ValueError(f"data.root is required for data.source={spec.source!r}.")
    overrides = {"image_size": spec.image_size} if spec.image_size else None
    transform = PairedTransform(timm_data_config(arch, overrides))
    if spec.source == "folder":
        classes = folder_classes(Path(spec.root))
        samples = scan_folder(Path(spec.root), classes, Path(spec.saliency_root) if spec.saliency_root else None)
        names: Optional[list[str]] = list(classes)
    else:
        classes = manifest_classes(read_manifest(Path(spec.root)))
        if spec.label_classes:
            classes = _index_classes(classes, spec.label_classes, spec.root)
        samples = manifest_samples(Path(spec.root), classes)
        names = None if all(c.lstrip("-").isdigit() for c in classes) else list(classes)  # indices name nothing
    labels = [s.label for s in samples]
    dataset = SaliencyImageDataset(samples, classes, transform)
    chosen = _first_per_class(labels, spec.samples_per_class)
    return ReportData(IndexedSubset(dataset, chosen), len(classes), f"{spec.source} {spec.root}", names)

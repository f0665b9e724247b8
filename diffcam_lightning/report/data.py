"""The report's images: the embedded synthetic set, an ImageNet-style folder or a CSV
manifest, reduced to the first ``samples_per_class`` images of every class (the
paper: 5 per class, 5,000 ImageNet validation images)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

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

SOURCES = ("synthetic", "folder", "csv")


@dataclass
class DataSpec:
    """``source``: synthetic | folder (``root/<class>/<image>``) | csv (``root`` = the
    manifest, columns ``image,label[,saliency]``). ``image_size`` overrides the model's
    timm input size (and sets the synthetic images' size). ``label_classes``: for a csv
    whose integer labels are the model's own class indices, the model's class count (e.g.
    1000 for an ImageNet model), so a few classes present still give the full head."""

    source: str = "synthetic"
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
    """``class_names``: the data's class names in label order (a folder's sorted folder
    names, a csv's sorted label names); ``None`` where the labels are bare indices."""

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

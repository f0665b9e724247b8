"""Real data on disk: an image folder (one sub-folder per class) or a CSV manifest
(``image,label[,saliency]``), with optional greyscale saliency maps.

Every sample is checked when the dataset is built (files exist, labels known, columns
present) so a bad row fails before training starts, naming the file and row. A sample
without a saliency map is kept (``has_saliency=False``, a zero map): the loss leaves it
out of the saliency term and logs how many there were. Nothing is skipped silently.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from typing_extensions import override

from .decode import DecodeMode, decode
from .transforms import PairedTransform

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
REQUIRED_COLUMNS = ("image", "label")


class DataError(ValueError):
    """A problem with a data file or manifest row (the message names it)."""


@dataclass(frozen=True)
class Sample:
    image: Path
    label: int
    saliency: Optional[Path]
    where: str  # "row 3 of train.csv" or the image path, for error messages


def _open(path: Path, mode: DecodeMode, where: str, what: str) -> Image.Image:
    if not path.is_file():
        raise DataError(f"Missing {what} file {str(path)!r} ({where}).")
    try:
        with Image.open(path) as img:
            return decode(img, mode)  # the picture a viewer shows (16-bit, alpha, EXIF: decode.py)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"Cannot read {what} file {str(path)!r} ({where}): {err}") from err


class SaliencyImageDataset(Dataset[dict[str, Tensor]]):
    """Samples -> ``{"image", "label", "saliency" [H, W], "has_saliency"}``."""

    def __init__(self, samples: Sequence[Sample], classes: Sequence[str], transform: PairedTransform) -> None:
        self.samples = list(samples)
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def missing_saliency(self) -> int:
        return sum(s.saliency is None for s in self.samples)

    @override
    def __getitem__(self, index: int) -> dict[str, Tensor]:
        s = self.samples[index]
        image = _open(s.image, "RGB", s.where, "image")
        sal_img = _open(s.saliency, "L", s.where, "saliency") if s.saliency is not None else None
        if sal_img is not None:
            _check_same_aspect(image, sal_img, s)
        tensor, sal = self.transform(image, sal_img)
        has = sal is not None
        if sal is None:
            sal = torch.zeros(tensor.shape[-2:])
        return {
            "image": tensor,
            "label": torch.tensor(s.label, dtype=torch.long),
            "saliency": sal.float(),
            "has_saliency": torch.tensor(has),
        }


def _check_same_aspect(image: Image.Image, saliency: Image.Image, sample: Sample) -> None:
    """Image and map are resized to the input separately: a map of another aspect (a map
    drawn on the unrotated pixels of an EXIF-rotated photo, say) would land on other pixels."""
    (iw, ih), (sw, sh) = image.size, saliency.size
    if abs(iw * sh - ih * sw) > 0.02 * max(iw * sh, ih * sw):
        raise DataError(
            f"Saliency map {str(sample.saliency)!r} is {sw}x{sh} px but its image {str(sample.image)!r} is shown at "
            f"{iw}x{ih} ({sample.where}): a map must have its image's aspect ratio, in the orientation a viewer shows "
            "(EXIF rotation applied)."
        )


def _check_exists(path: Path, where: str, what: str) -> None:
    if not path.is_file():
        raise DataError(f"Missing {what} file {str(path)!r} ({where}).")


def folder_classes(root: Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Image folder {str(root)!r} does not exist or is not a directory.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"Image folder {str(root)!r} has no class sub-folders (expected root/<class>/<image>).")
    return classes


def _find_saliency(saliency_root: Path, rel: Path) -> Optional[Path]:
    """``saliency_root/<class>/<stem>.<any image extension>``; ``None`` if absent."""
    for ext in (rel.suffix, *IMAGE_EXTENSIONS):
        candidate = saliency_root / rel.with_suffix(ext)
        if candidate.is_file():
            return candidate
    return None


def scan_folder(root: Path, classes: Sequence[str], saliency_root: Optional[Path] = None) -> list[Sample]:
    """Images under ``root/<class>/``; a class folder not in ``classes`` is an error."""
    root = Path(root)
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name not in index:
            raise DataError(
                f"Class folder {str(folder)!r} is not one of the {len(classes)} known classes "
                f"({', '.join(list(classes)[:10])}{', ...' if len(classes) > 10 else ''})."
            )
        for path in sorted(folder.rglob("*")):
            hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)  # .ipynb_checkpoints, ._x.jpg
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file() and not hidden:
                rel = path.relative_to(root)
                sal = _find_saliency(Path(saliency_root), rel) if saliency_root else None
                samples.append(Sample(path, index[folder.name], sal, str(path)))
    if not samples:
        raise DataError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under {str(root)!r}.")
    return samples


def read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the rows of a CSV file, names and cells stripped; read as utf-8-sig
    (Excel's "CSV UTF-8" starts with a BOM). Training manifests and explain's share it."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    return columns, rows


def read_manifest(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV manifest with at least the columns ``image,label``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Missing manifest file {str(path)!r}.")
    columns, rows = read_csv_rows(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DataError(
            f"Manifest {str(path)!r} lacks column(s) {', '.join(missing)}; it has {columns or 'no header'}. "
            "Expected a header 'image,label[,saliency]'."
        )
    return rows


def manifest_classes(rows: list[dict[str, str]]) -> list[str]:
    labels = {r["label"] for r in rows if r["label"]}
    if labels and all(lab.lstrip("-").isdigit() for lab in labels):
        return [str(i) for i in range(max(int(lab) for lab in labels) + 1)]
    return sorted(labels)


def manifest_samples(path: Path, classes: Sequence[str], root: Optional[Path] = None) -> list[Sample]:
    """Rows -> samples; paths are relative to ``root`` (default: the manifest's folder).
    An empty ``saliency`` cell means "no map for this image"; a named map must exist."""
    path = Path(path)
    base = Path(root) if root else path.parent
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for n, row in enumerate(read_manifest(path), start=2):  # row 1 is the header
        where = f"row {n} of {path}"
        if not row.get("image"):
            raise DataError(f"Empty 'image' cell ({where}).")
        if row.get("label", "") not in index:
            valid = ", ".join(list(classes)[:10]) + (", ..." if len(classes) > 10 else "")
            raise DataError(f"Unknown label {row.get('label')!r} ({where}); valid labels: {valid}.")
        image = base / row["image"]
        _check_exists(image, where, "image")
        sal = None
        if row.get("saliency"):
            sal = base / row["saliency"]
            _check_exists(sal, where, "saliency")
        samples.append(Sample(image, index[row["label"]], sal, where))
    if not samples:
        raise DataError(f"Manifest {str(path)!r} has no rows.")
    return samples

"""The images a user hands to ``diffcam explain``: files, folders (recursive) and CSV
manifests (a header with ``image`` and optionally ``label``; paths relative to the
manifest). An image that cannot be decoded is reported by the dataset (``ok=False``),
so the predict loop can stop with its name or skip and list it, never silently."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from typing_extensions import override

from ..data.decode import to_rgb
from ..data.files import IMAGE_EXTENSIONS, read_csv_rows

EXPLAIN_EXTENSIONS = (*IMAGE_EXTENSIONS, ".gif")  # the training data's, and GIF


class ExplainInputError(ValueError):
    """Bad ``--images`` input: a missing path, an empty folder, a malformed manifest, an
    unreadable image."""


@dataclass(frozen=True)
class ImageItem:
    """One image to explain: its file and, from a manifest, its label cell."""

    path: Path
    label: Optional[str] = None  # the manifest's label cell (class index or name), if any


def _manifest_items(path: Path) -> list[ImageItem]:
    columns, rows = read_csv_rows(path)
    if "image" not in columns:
        raise ExplainInputError(f"Manifest {path} has no 'image' column; it has {columns or 'no header'}.")
    items = []
    for n, row in enumerate(rows, start=2):
        if not row.get("image"):
            raise ExplainInputError(f"Empty 'image' cell in row {n} of {path}.")
        image = path.parent / row["image"]
        if not image.is_file():
            raise ExplainInputError(f"Image {image} (row {n} of {path}) does not exist.")
        items.append(ImageItem(image, row.get("label") or None))
    if not items:
        raise ExplainInputError(f"Manifest {path} has no rows.")
    return items


def collect_images(paths: Sequence[str]) -> list[ImageItem]:
    """Expand files, folders (recursively, sorted) and ``.csv`` manifests, in the order given."""
    if not paths:
        raise ExplainInputError("No images given (--images PATH [PATH ...]).")
    items: list[ImageItem] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in EXPLAIN_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)  # .ipynb_checkpoints, ._x.jpg
            )
            if not found:
                raise ExplainInputError(f"Folder {path} holds no images ({', '.join(EXPLAIN_EXTENSIONS)}).")
            items += [ImageItem(p) for p in found]
        elif path.suffix.lower() == ".csv" and path.is_file():
            items += _manifest_items(path)
        elif path.is_file():
            items.append(ImageItem(path))
        else:
            raise ExplainInputError(f"{path} does not exist (expected an image, a folder or a .csv manifest).")
    return items


class ExplainDataset(Dataset[dict[str, Any]]):
    """The images of ``diffcam explain`` as ``{"image": Tensor[3, H, W], "index", "ok", "error"}``.

    An undecodable image gives ``ok=False`` with the reason and a zero image of the same
    size, so the predict loop stops at it with its name, or skips and lists it.

    Args:
        items: The images (:func:`collect_images`).
        transform: The model's input transform, ``(image, saliency) -> (tensor, saliency)``.
        size: The input ``(H, W)`` (the size of the zero image of an undecodable file).

    Example:
        >>> from diffcam_lightning.data.transforms import PairedTransform
        >>> _ = Path("broken.jpg").write_bytes(b"not a jpeg")
        >>> config = {"input_size": (3, 32, 32), "crop_pct": 1.0, "mean": (0.5,) * 3, "std": (0.5,) * 3}
        >>> sample = ExplainDataset([ImageItem(Path("broken.jpg"))], PairedTransform(config), (32, 32))[0]
        >>> bool(sample["ok"]), sample["image"].shape, sample["error"].split(":")[0]
        (False, torch.Size([3, 32, 32]), 'UnidentifiedImageError')
    """

    def __init__(
        self,
        items: Sequence[ImageItem],
        transform: Callable[[Image.Image, Optional[Image.Image]], tuple[Tensor, Optional[Tensor]]],
        size: tuple[int, int],
    ) -> None:
        self.items, self.transform, self.size = list(items), transform, size

    def __len__(self) -> int:
        return len(self.items)

    @override
    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.items[index].path
        try:
            with Image.open(path) as image:
                rgb = to_rgb(image)  # decodes the whole file as a viewer shows it (data/decode.py)
        except Exception as err:  # any decoder failure is reported with the file
            error = f"{type(err).__name__}: {err}"
            return {
                "image": torch.zeros(3, *self.size),
                "index": torch.tensor(index),
                "ok": torch.tensor(False),
                "error": error,
            }
        tensor = self.transform(rgb, None)[0]
        return {"image": tensor, "index": torch.tensor(index), "ok": torch.tensor(True), "error": ""}

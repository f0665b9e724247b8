"""Real photographs that ship with PyPI packages (nothing downloaded), and seeded
augmented views of them (crops, flips, rescalings) for experiments that need more images.

Sources: ``skimage.data`` (colour and greyscale photographs), scikit-learn's
``load_sample_images`` (china, flower) and matplotlib's ``grace_hopper.jpg``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

_SKIMAGE = (
    "astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "hubble_deep_field",
    "colorwheel", "camera", "coins", "moon", "page", "text", "brick", "grass", "gravel", "cell", "clock",
)  # fmt: skip


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        image: np.ndarray = getattr(skimage.data, name)()
        return image

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        image: np.ndarray = load_sample_image(filename)
        return image

    return load


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        return np.asarray(image.convert("RGB"))


# name -> loader of an HxW or HxWx3 uint8 array
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    **{name: _skimage(name) for name in _SKIMAGE},
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
    "grace_hopper": _grace_hopper,
}


def load_photo(name: str) -> Image.Image:
    """One photograph as an RGB PIL image (greyscale ones replicated to 3 channels)."""
    if name not in PHOTOS:
        raise ValueError(f"Unknown photo {name!r}; available: {', '.join(PHOTOS)}.")
    array = np.asarray(PHOTOS[name]())
    if array.dtype != np.uint8:
        raise ValueError(f"Photo {name!r} is {array.dtype}, expected uint8.")
    return Image.fromarray(array).convert("RGB")


def write_photos(folder: Path, names: Optional[Sequence[str]] = None) -> list[Path]:
    """Save the photographs as ``folder/<name>.png``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names or list(PHOTOS):
        path = folder / f"{name}.png"
        load_photo(name).save(path)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class View:
    """One augmented view: a crop box (fractions of the photo), a flip and a rescaling."""

    photo: str
    box: tuple[float, float, float, float]  # left, top, right, bottom in [0, 1]
    flip: bool
    scale: float

    def apply(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        left, top, right, bottom = self.box
        view = image.crop((round(left * w), round(top * h), round(right * w), round(bottom * h)))
        if self.flip:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        size = (max(16, round(view.width * self.scale)), max(16, round(view.height * self.scale)))
        return view.resize(size, Image.Resampling.BILINEAR)


def sample_views(names: Sequence[str], per_photo: int, seed: int = 0) -> list[View]:
    """``per_photo`` seeded views of each photo; the first view of each is the whole photo.
    Crops keep 60-100% of each side; rescalings are 0.5-1.5x; half the views are flipped."""
    rng = np.random.default_rng(seed)
    views = []
    for name in names:
        views.append(View(name, (0.0, 0.0, 1.0, 1.0), False, 1.0))
        for _ in range(per_photo - 1):
            fw, fh = rng.uniform(0.6, 1.0, size=2)
            left, top = rng.uniform(0, 1 - fw), rng.uniform(0, 1 - fh)
            views.append(
                View(name, (left, top, left + fw, top + fh), bool(rng.random() < 0.5), float(rng.uniform(0.5, 1.5)))
            )
    return views


def write_views(folder: Path, views: Sequence[View], labels: Optional[dict[str, int]] = None) -> Path:
    """Save each view as ``folder/<photo>_<i>.png`` and a manifest ``folder/views.csv``
    (``image,label,photo``; ``label`` from ``labels[photo]``, empty without). Returns the manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cache: dict[str, Image.Image] = {}
    rows = []
    for i, view in enumerate(views):
        image = cache.setdefault(view.photo, load_photo(view.photo))
        name = f"{view.photo}_{i:03d}.png"
        view.apply(image).save(folder / name)
        label = "" if labels is None else str(labels[view.photo])
        rows.append({"image": name, "label": label, "photo": view.photo})
    manifest = folder / "views.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label", "photo"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest

"""The embedded procedural dataset: clutter plus one class-deciding object.

Every sample is a pure function of ``(seed, split, index)``: no downloads, no files, the
same image on every machine and in every worker. The class decides the object's shape
and its saturated colour; the clutter is drawn from the same shapes in grey (and
smaller), so a model must find the coloured object. The object's mask is the "human"
saliency map (what an annotator would outline).

Class ``c`` uses shape ``SHAPES[c % S]`` and hue ``(c // S) / ceil(C / S)`` shifted by
the shape index, so every class has a distinct (shape, hue) pair for up to
``len(SHAPES) * hues`` classes.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .shapes import SHAPES

SPLITS = {"train": 0, "val": 1, "test": 2, "predict": 3}

PRESETS: dict[str, dict] = {
    "few": dict(num_classes=7),  # like Iris PAD's seven classes
    "many": dict(num_classes=100),
}

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the generator (everything a sample depends on, besides its index)."""

    num_classes: int = 7
    image_size: int = 64
    clutter: int = 4
    object_scale: tuple[float, float] = (0.16, 0.22)  # object radius / image size
    clutter_scale: tuple[float, float] = (0.07, 0.12)
    noise: float = 0.06
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2; got {self.num_classes}.")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels; got {self.image_size}.")
        if self.clutter < 0:
            raise ValueError(f"clutter must be >= 0; got {self.clutter}.")


def class_shape_and_colour(spec: SyntheticSpec, label: int) -> tuple[str, tuple[float, float, float]]:
    """The object's shape name and RGB colour in [0, 1] for class ``label``."""
    names = list(SHAPES)
    n_shapes = min(len(names), spec.num_classes)
    hues = math.ceil(spec.num_classes / n_shapes)
    shape_idx, hue_idx = label % n_shapes, label // n_shapes
    hue = (hue_idx / hues + shape_idx / (n_shapes * hues)) % 1.0
    return names[shape_idx], colorsys.hsv_to_rgb(hue, 0.9, 0.95)


def _shape_mask(name: str, size: int, cy: float, cx: float, radius: float, angle: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = (yy + 0.5 - cy) / radius, (xx + 0.5 - cx) / radius
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return SHAPES[name](u, v)


def render(spec: SyntheticSpec, label: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image ``[H, W, 3]`` in [0, 1] and its object mask ``[H, W]`` (0/1)."""
    size = spec.image_size
    # background: a smooth random colour gradient plus pixel noise
    base = rng.uniform(0.25, 0.6, size=3)
    ramp = rng.uniform(-0.15, 0.15, size=(2, 3))
    t = np.linspace(-1, 1, size, dtype=np.float32)
    img = base[None, None, :] + t[:, None, None] * ramp[0] + t[None, :, None] * ramp[1]
    img = np.broadcast_to(img, (size, size, 3)).astype(np.float32).copy()
    names = list(SHAPES)
    obj_shape, obj_colour = class_shape_and_colour(spec, label)
    # clutter: grey shapes of any kind, smaller than the object
    for _ in range(spec.clutter):
        r = rng.uniform(*spec.clutter_scale) * size
        cy, cx = rng.uniform(r, size - r, size=2)
        mask = _shape_mask(names[rng.integers(len(names))], size, cy, cx, r, rng.uniform(0, 2 * math.pi))
        img[mask] = rng.uniform(0.05, 0.95)
    # the object, drawn last (on top), fully inside the image
    r = rng.uniform(*spec.object_scale) * size
    cy, cx = rng.uniform(r, size - r, size=2)
    mask = _shape_mask(obj_shape, size, cy, cx, r, rng.uniform(-0.3, 0.3))
    img[mask] = np.asarray(obj_colour, dtype=np.float32) * rng.uniform(0.85, 1.0)
    img += rng.normal(0.0, spec.noise, size=img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0), mask.astype(np.float32)


class SyntheticShapes(Dataset):
    """``length`` samples of one split; sample ``i`` depends only on ``(seed, split, i)``.

    Returns ``{"image": [3, H, W] normalised with mean/std 0.5, "label": long,
    "saliency": [H, W] object mask, "has_saliency": True}``. Labels cycle through the
    classes (balanced splits).
    """

    def __init__(self, length: int, split: str = "train", spec: Optional[SyntheticSpec] = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r}; valid: {', '.join(SPLITS)}.")
        if length < 1:
            raise ValueError(f"length must be >= 1; got {length}.")
        self.length = int(length)
        self.split = split
        self.spec = spec or SyntheticSpec()

    def __len__(self) -> int:
        return self.length

    def label(self, index: int) -> int:
        return index % self.spec.num_classes

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a {self.split} split of {self.length}.")
        label = self.label(index)
        rng = np.random.default_rng([self.spec.seed, SPLITS[self.split], index])
        img, mask = render(self.spec, label, rng)
        image = torch.from_numpy(img).permute(2, 0, 1).contiguous()
        image = (image - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
        return {
            "image": image,
            "label": torch.tensor(label, dtype=torch.long),
            "saliency": torch.from_numpy(mask),
            "has_saliency": torch.tensor(True),
        }


def denormalize(image: Tensor) -> Tensor:
    """Back to [0, 1] RGB for display (inverse of the dataset's normalisation)."""
    mean = torch.tensor(MEAN, device=image.device).view(-1, 1, 1)
    std = torch.tensor(STD, device=image.device).view(-1, 1, 1)
    return (image * std + mean).clamp(0, 1)

"""The embedded procedural dataset: clutter plus one class-deciding object.

Every sample is a pure function of ``(seed, split, index)``: no downloads, no files, the
same image on every machine and in every worker. The class decides the object's shape
and its saturated colour; the clutter is drawn from the same shapes in grey (and
smaller), so a model must find the coloured object. The object's mask is the "human"
saliency map (what an annotator would outline).

Class ``c`` uses shape ``SHAPES[c % S]`` and hue ``(c // S) / ceil(C / S)`` shifted by
the shape index, so every class has a distinct (shape, hue) pair for up to
``len(SHAPES) * hues`` classes.

The *cue* variant (``SyntheticSpec(cue=True)``) is a shortcut the annotations never mark:
a small square in the label's colour decides the label, and the large object (whose mask
is still the "human" saliency map) is drawn for a random class, independent of the label.
A model that fits it uses the cue alone; an explanation that still outlines the object is
plausible but not faithful (issue 18's plausible fooling). ``SyntheticShapes(ablate=...)``
renders the same samples without the cue or without the object (the same random draws),
to measure which of the two a model uses.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from typing_extensions import override

from .shapes import SHAPES

SPLITS = {"train": 0, "val": 1, "test": 2, "predict": 3}
Split = Literal["train", "val", "test", "predict"]  # the keys of SPLITS

PRESETS: dict[str, dict[str, Any]] = {
    "few": {"num_classes": 7},  # like Iris PAD's seven classes
    "many": {"num_classes": 100},
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
    cue: bool = False  # a label-deciding small square the saliency map does not mark (module docstring)
    cue_scale: float = 0.08  # the cue's half side / image size

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2; got {self.num_classes}.")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels; got {self.image_size}.")
        if self.clutter < 0:
            raise ValueError(f"clutter must be >= 0; got {self.clutter}.")


CUE_OBJECT_SATURATION = 0.35  # the cue variant's objects: pale, so the label's colour is the cue's alone


def class_shape_and_colour(
    spec: SyntheticSpec, label: int, saturation: float = 0.9
) -> tuple[str, tuple[float, float, float]]:
    """The object's shape name and RGB colour in [0, 1] for class ``label``."""
    names = list(SHAPES)
    n_shapes = min(len(names), spec.num_classes)
    hues = math.ceil(spec.num_classes / n_shapes)
    shape_idx, hue_idx = label % n_shapes, label // n_shapes
    hue = (hue_idx / hues + shape_idx / (n_shapes * hues)) % 1.0
    return names[shape_idx], colorsys.hsv_to_rgb(hue, saturation, 0.95)


def _shape_mask(name: str, size: int, cy: float, cx: float, radius: float, angle: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = (yy + 0.5 - cy) / radius, (xx + 0.5 - cx) / radius
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return SHAPES[name](u, v)


ABLATIONS = (None, "cue", "object")
Ablation = Optional[Literal["cue", "object"]]  # ABLATIONS


def render(
    spec: SyntheticSpec, label: int, rng: np.random.Generator, ablate: Ablation = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image ``[H, W, 3]`` in [0, 1], its object mask and its cue mask ``[H, W]`` (0/1;
    the cue mask is all zeros without ``spec.cue``). ``ablate`` leaves the cue or the object
    unpainted but draws the same random numbers, so the rest of the image is identical."""
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
    if spec.cue:  # the object is a random class's shape, pale; the saturated cue carries the label
        obj_shape, obj_colour = class_shape_and_colour(spec, int(rng.integers(spec.num_classes)), CUE_OBJECT_SATURATION)
    # the object, drawn on top of the clutter, fully inside the image
    r = rng.uniform(*spec.object_scale) * size
    cy, cx = rng.uniform(r, size - r, size=2)
    mask = _shape_mask(obj_shape, size, cy, cx, r, rng.uniform(-0.3, 0.3))
    shade = rng.uniform(0.85, 1.0)
    if ablate != "object":
        img[mask] = np.asarray(obj_colour, dtype=np.float32) * shade
    cue = np.zeros((size, size), dtype=bool)
    if spec.cue:
        cue = _cue_mask(spec, rng, mask)
        if ablate != "cue":
            img[cue] = np.asarray(class_shape_and_colour(spec, label)[1], dtype=np.float32)
    img += rng.normal(0.0, spec.noise, size=img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0), mask.astype(np.float32), cue.astype(np.float32)


def _cue_mask(spec: SyntheticSpec, rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """A small axis-aligned square off the object (the first of 16 seeded tries that does not touch it)."""
    size = spec.image_size
    half = max(1, round(spec.cue_scale * size))
    corners = rng.integers(0, size - 2 * half, size=(16, 2))
    cue = np.zeros((size, size), dtype=bool)
    for y, x in corners:
        cue[:] = False
        cue[y : y + 2 * half, x : x + 2 * half] = True
        if not (cue & avoid).any():
            break
    return cue


class SyntheticShapes(Dataset[dict[str, Tensor]]):
    """``length`` samples of one split; sample ``i`` depends only on ``(seed, split, i)``.

    Each sample is ``{"image": [3, H, W] normalised with mean/std 0.5, "label": long,
    "saliency": [H, W] object mask, "has_saliency": True}``. Labels cycle through the
    classes (balanced splits).

    Args:
        length: the number of samples.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"predict"`` (disjoint draws).
        spec: image size, classes, seed and cue options (default :class:`SyntheticSpec`).
        ablate: ``None``, ``"cue"`` (the class cue removed) or ``"object"`` (the object removed).

    Raises:
        ValueError: an unknown split or ablation, or ``length < 1``.

    Example:
        >>> from diffcam_lightning.data.synthetic import SyntheticShapes
        >>> sample = SyntheticShapes(4, "val")[1]
        >>> sorted(sample), tuple(sample["image"].shape), int(sample["label"])
        (['has_saliency', 'image', 'label', 'saliency'], (3, 64, 64), 1)
    """

    def __init__(
        self, length: int, split: Split = "train", spec: Optional[SyntheticSpec] = None, ablate: Ablation = None
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r}; valid: {', '.join(SPLITS)}.")
        if ablate not in ABLATIONS:
            raise ValueError(f"Unknown ablate {ablate!r}; valid: None, 'cue', 'object'.")
        self.ablate = ablate
        if length < 1:
            raise ValueError(f"length must be >= 1; got {length}.")
        self.length = int(length)
        self.split = split
        self.spec = spec or SyntheticSpec()

    def __len__(self) -> int:
        return self.length

    def label(self, index: int) -> int:
        return index % self.spec.num_classes

    @override
    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a {self.split} split of {self.length}.")
        img, mask, _ = self.render(index)
        label = self.label(index)
        image = torch.from_numpy(img).permute(2, 0, 1).contiguous()
        image = (image - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
        return {
            "image": image,
            "label": torch.tensor(label, dtype=torch.long),
            "saliency": torch.from_numpy(mask),
            "has_saliency": torch.tensor(True),
        }

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample ``index`` as ``render`` gives it: image ``[H, W, 3]``, object mask, cue mask."""
        rng = np.random.default_rng([self.spec.seed, SPLITS[self.split], index])
        return render(self.spec, self.label(index), rng, self.ablate)

    def cue_mask(self, index: int) -> Tensor:
        """Where sample ``index``'s cue is (``[H, W]``, all zeros without ``spec.cue``)."""
        return torch.from_numpy(self.render(index)[2])


def denormalize(image: Tensor) -> Tensor:
    """Back to [0, 1] RGB for display (inverse of the dataset's normalisation)."""
    mean = torch.tensor(MEAN, device=image.device).view(-1, 1, 1)
    std = torch.tensor(STD, device=image.device).view(-1, 1, 1)
    return (image * std + mean).clamp(0, 1)

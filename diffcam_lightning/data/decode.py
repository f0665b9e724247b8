"""An image file as the picture a viewer shows: 8-bit RGB (images) or greyscale (saliency).

``Image.convert("RGB")`` alone gets several modes wrong without a word: a 16-bit greyscale
PNG (``I;16``, medical and scientific images) is clipped at 255, so a full-range gradient
reaches the model almost all white; a palette or RGBA image with transparency shows the
colours hidden under its transparent pixels; a JPEG's EXIF orientation is ignored, so a
phone photo comes out on its side. Here each mode is scaled by its own range, transparency
is composited on a stated background and the EXIF orientation is applied.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image, ImageOps

DecodeMode = Literal["RGB", "L"]  # the keys of DECODERS: an image, a saliency map

# transparent pixels of an image are composited on white (a page, as viewers show them);
# of a saliency map on black (no saliency)
IMAGE_BACKGROUND = (255, 255, 255)
SALIENCY_BACKGROUND = (0, 0, 0)

# integer modes wider than 8 bits -> the value that is full white. "I" is how Pillow opens
# some 16-bit PNG and TIFF files, so its range is taken as 16-bit too.
WIDE_RANGES: dict[str, int] = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}
FLOAT_RANGE = 1.0  # a 32-bit float image ("F") is read in [0, 1], as torchvision's tensors


def _scaled_to_8bit(image: Image.Image) -> Image.Image:
    """A wide integer or float greyscale image as ``L``, scaled by its mode's range."""
    values = np.asarray(image, dtype=np.float64)
    top = float(WIDE_RANGES.get(image.mode, FLOAT_RANGE))
    finite = np.isfinite(values)
    if not finite.all() or values.min(initial=0.0) < 0 or values.max(initial=0.0) > top:
        low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (np.nan, np.nan)
        raise ValueError(
            f"a {image.mode!r} image must hold values in [0, {top:g}] (its mode's range); this one holds "
            f"[{low:g}, {high:g}]{'' if finite.all() else ' and non-finite values'}: save it as 8- or 16-bit."
        )
    return Image.fromarray(np.round(values * (255.0 / top)).astype(np.uint8), mode="L")


def _flattened(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Modes with transparency composited on ``background``; others unchanged."""
    if (image.mode == "P" and "transparency" in image.info) or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("LA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        canvas = Image.new("RGBA", image.size, (*background, 255))
        return Image.alpha_composite(canvas, image).convert("RGB")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """The picture a viewer shows, as 8-bit RGB (EXIF-rotated, wide modes scaled,
    transparency on :data:`IMAGE_BACKGROUND`; palette, CMYK, greyscale converted)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in WIDE_RANGES or image.mode == "F":
        return _scaled_to_8bit(image).convert("RGB")
    return _flattened(image, IMAGE_BACKGROUND).convert("RGB")


def to_gray(image: Image.Image) -> Image.Image:
    """A saliency map as 8-bit greyscale (``L``): EXIF-rotated, wide modes scaled by
    their range, transparency on :data:`SALIENCY_BACKGROUND`."""
    image = ImageOps.exif_transpose(image)
    if image.mode in WIDE_RANGES or image.mode == "F":
        return _scaled_to_8bit(image)
    return _flattened(image, SALIENCY_BACKGROUND).convert("L")


def decode(image: Image.Image, mode: DecodeMode) -> Image.Image:
    """``to_rgb`` for ``mode="RGB"``, ``to_gray`` for ``mode="L"``."""
    if mode not in DECODERS:
        raise ValueError(f"Unknown decode mode {mode!r}; valid: {', '.join(DECODERS)}.")
    return DECODERS[mode](image)


DECODERS = {"RGB": to_rgb, "L": to_gray}

"""Image grids of the audit: each row an input image and its CAMs overlaid with a colormap.

Rendering uses matplotlib's colormaps (no figure, no GUI backend) and
``torchvision.utils.make_grid``; ``sinks.py`` sends the grid to the trainer's loggers.
The labels are drawn inside the picture (a title row naming each column, a label per row
naming the explained class and the prediction), so the picture reads the same in every
logger's image viewer; cells are upscaled to at least ``MIN_CELL`` pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

if TYPE_CHECKING:
    from PIL import ImageFont

    Font = Union[ImageFont.FreeTypeFont, ImageFont.ImageFont]

MIN_CELL = 96  # pixels: the smallest side of a grid cell, whatever the input size


def _unit(images: Tensor) -> Tensor:
    """Per-image min-max to [0, 1] (the audit does not know the user's normalisation)."""
    flat = images.flatten(1)
    lo, hi = flat.amin(1), flat.amax(1)
    return (images - lo.view(-1, 1, 1, 1)) / (hi - lo + 1e-7).view(-1, 1, 1, 1)


def _rgb(images: Tensor) -> Tensor:
    if images.shape[1] == 3:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    return images[:, :3] if images.shape[1] > 3 else torch.cat([images, images[:, -1:]], 1)[:, :3]


def colorize(maps: Tensor, cmap: str = "jet") -> Tensor:
    """``[B, H, W]`` in [0, 1] -> RGB ``[B, 3, H, W]`` through a matplotlib colormap."""
    from matplotlib import colormaps

    lut = torch.as_tensor(colormaps[cmap](torch.linspace(0, 1, 256).numpy())[:, :3], dtype=torch.float32)
    idx = (maps.clamp(0, 1) * 255).round().long().cpu()
    return lut[idx].permute(0, 3, 1, 2).contiguous()


def overlay(images: Tensor, maps: Tensor, alpha: float = 0.5, cmap: str = "jet") -> Tensor:
    """Heatmaps (any grid, resized bilinearly to the images and min-max'd) over the images."""
    size = images.shape[-2:]
    up = F.interpolate(maps.float().cpu().unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
    flat = up.flatten(1)
    lo, hi = flat.amin(1).view(-1, 1, 1), flat.amax(1).view(-1, 1, 1)
    up = (up - lo) / (hi - lo + 1e-7)
    return (1 - alpha) * images + alpha * colorize(up, cmap)


def audit_grid(
    images: Tensor,
    maps: dict[str, Tensor],
    saliency: Optional[Tensor] = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    padding: int = 2,
    row_labels: Optional[Sequence[str]] = None,
    min_cell: int = MIN_CELL,
) -> tuple[Tensor, list[str]]:
    """One row per image: the input, its saliency map (when given), then each method's
    overlay, under a title row naming the columns; ``row_labels`` (one per image, lines
    split by ``\\n``) go in a column on the left. Images are upscaled by a whole factor
    to cells of at least ``min_cell`` pixels. Returns the grid ``[3, H', W']`` in [0, 1]
    and the column titles."""
    from torchvision.utils import make_grid

    if row_labels is not None and len(row_labels) != len(images):
        raise ValueError(f"audit_grid: {len(row_labels)} row labels for {len(images)} images.")
    base = _upscale(_rgb(_unit(images.detach().float().cpu())), min_cell)
    columns: list[Tensor] = [base]
    titles = ["input"]
    if saliency is not None:
        columns.append(overlay(base, saliency, alpha, cmap))
        titles.append("saliency")
    for name, m in maps.items():
        columns.append(overlay(base, m, alpha, cmap))
        titles.append(name)
    tiles = torch.stack(columns, dim=1).flatten(0, 1)  # row-major: image, then its columns
    grid = make_grid(tiles, nrow=len(columns), padding=padding, pad_value=1.0).clamp(0, 1)
    cell = (int(base.shape[-2]), int(base.shape[-1]))
    return label_grid(grid, titles, cell, padding, row_labels), titles


def _upscale(images: Tensor, min_cell: int) -> Tensor:
    """Nearest-neighbour upscaling by the smallest whole factor that reaches ``min_cell``."""
    factor = max(1, math.ceil(min_cell / min(images.shape[-2:])))
    return images if factor == 1 else F.interpolate(images, scale_factor=factor, mode="nearest")


def _font(size: int) -> Font:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _fitting_font(lines: Sequence[str], width: int, size: int) -> Font:
    """The largest default font, at most ``size``, that fits every line in ``width`` pixels."""
    while size > 6:
        font = _font(size)
        if all(font.getlength(line) <= width for line in lines):
            return font
        size -= 1
    return _font(6)


def label_grid(
    grid: Tensor, titles: Sequence[str], cell: tuple[int, int], padding: int, row_labels: Optional[Sequence[str]] = None
) -> Tensor:
    """The grid with a title row above (one title centred over each column) and, when
    given, a column of row labels on its left; white background, black text."""
    from PIL import Image, ImageDraw

    h, w = cell
    size = max(12, w // 9)
    title_h = 2 * size
    lines = [line for label in (row_labels or ()) for line in label.split("\n")]
    label_w = w if row_labels is not None else 0
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    canvas = Image.new("RGB", (array.shape[1] + label_w, array.shape[0] + title_h), "white")
    canvas.paste(Image.fromarray(array), (label_w, title_h))
    draw = ImageDraw.Draw(canvas)
    font = _fitting_font(titles, w, size)
    for j, title in enumerate(titles):
        x = label_w + padding + j * (w + padding) + w / 2
        draw.text((x, title_h / 2), title, fill="black", font=font, anchor="mm")
    if row_labels is not None:
        font = _fitting_font(lines, w - 4, size)
        for i, label in enumerate(row_labels):
            y = title_h + padding + i * (h + padding) + h / 2
            draw.multiline_text((4, y), label, fill="black", font=font, anchor="lm", spacing=4)
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255

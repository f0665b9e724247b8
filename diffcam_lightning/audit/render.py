"""Image grids of the audit: each row an input image and its CAMs overlaid with a colormap.

Rendering uses matplotlib's colormaps (no figure, no GUI backend) and
``torchvision.utils.make_grid``; ``sinks.py`` sends the grid to the trainer's loggers.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F


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
) -> tuple[Tensor, list[str]]:
    """One row per image: the input, its saliency map (when given), then each method's
    overlay. Returns the grid ``[3, H', W']`` in [0, 1] and the column titles."""
    from torchvision.utils import make_grid

    base = _rgb(_unit(images.detach().float().cpu()))
    columns: list[Tensor] = [base]
    titles = ["input"]
    if saliency is not None:
        columns.append(overlay(base, saliency, alpha, cmap))
        titles.append("saliency")
    for name, m in maps.items():
        columns.append(overlay(base, m, alpha, cmap))
        titles.append(name)
    tiles = torch.stack(columns, dim=1).flatten(0, 1)  # row-major: image, then its columns
    grid = make_grid(tiles, nrow=len(columns), padding=padding, pad_value=1.0)
    return grid.clamp(0, 1), titles

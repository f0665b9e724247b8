"""Post-processing shared by every method: ReLU -> bilinear resize -> min-max.

This order matches pytorch-grad-cam (which normalises, resizes with cv2 and normalises
again) to ~1e-5; normalising before resizing differs by ~1e-2.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor
from torch.nn import functional as F

SizeSpec = Union[None, str, int, Sequence[int]]

NORMALIZE_EPS = 1e-7


def resolve_size(size: SizeSpec, input_hw: tuple[int, int]) -> Optional[tuple[int, int]]:
    """``None`` (CAM grid), ``"input"``, an int (square) or ``(H, W)``."""
    if size is None:
        return None
    if isinstance(size, str):
        if size != "input":
            raise ValueError(f"size must be None, 'input', an int or (H, W); got {size!r}.")
        return input_hw
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be None, 'input', an int or (H, W) of positive ints; got {size!r}.")
    return size


def minmax_normalize(maps: Tensor, eps: float = NORMALIZE_EPS) -> Tensor:
    """Per-map ``(m - min) / (max - min + eps)``; a constant map becomes all zeros."""
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    hi = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - lo) / (hi - lo + eps)


def resize(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``[B, h, w]`` maps (``align_corners=False``, like cv2)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def postprocess(raw: Tensor, size: Optional[tuple[int, int]], normalize: bool) -> Tensor:
    maps = torch.relu(raw.float())
    if size is not None:
        maps = resize(maps, size)
    if normalize:
        maps = minmax_normalize(maps)
    return maps

"""Post-processing shared by every method: ReLU -> bilinear resize -> min-max.

This order matches pytorch-grad-cam (which normalises, resizes with cv2 and normalises
again) to ~1e-5; normalising before resizing differs by ~1e-2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import Tensor
from torch.nn import functional as F

SizeSpec = Union[None, str, int, Sequence[int]]
"""``size=``: ``None`` (the layer's grid), ``"input"``, an int (square) or ``(h, w)``."""

# A map whose range is at most this many float ulps of its magnitude is constant up to
# rounding (e.g. a constant map after bilinear resizing): it becomes all zeros.
CONSTANT_ULPS = 8


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


def minmax_normalize(maps: Tensor) -> Tensor:
    """Per-map ``(m - min) / (max - min)``: exactly 1 at the maximum of any non-constant map,
    whatever its scale (an additive epsilon made maps with a range of 1e-6 top out at 0.94).
    A map constant up to rounding becomes all zeros, never NaN, also in its gradient."""
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    hi = maps.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    info = torch.finfo(span.dtype)
    constant = span <= CONSTANT_ULPS * info.eps * torch.maximum(hi.abs(), lo.abs()).clamp(min=info.tiny)
    scaled = (maps - lo) / torch.where(constant, torch.ones_like(span), span)
    return torch.where(constant, torch.zeros_like(scaled), scaled)


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

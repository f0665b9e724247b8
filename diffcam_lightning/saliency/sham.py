"""SHAM: Saliency-Hoax Activation Maps (paper sec. 3.2), adversarial saliency targets.

A SHAM has ``k`` pixels set to 1, with ``k`` the largest count whose entropy ``ln k``
(nats, as a uniform distribution over ``k`` pixels) does not exceed the requested entropy.
The 7x7 border SHAM at 3.35 nats has 28 ones (entropy ln 28 = 3.33): the 24 pixels of the
outer ring and the 4 corners of the next ring. A pattern is a priority map: the ``k``
pixels with the lowest priority become 1.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import torch
from torch import Tensor

Priority = Callable[[int, int], Tensor]

SHAM_PATTERNS: dict[str, Priority] = {}

PAPER_ENTROPY = 3.35


def register_pattern(name: str) -> Callable[[Priority], Priority]:
    """Register ``fn(h, w) -> priority [h, w]`` (lower is filled first, ties by raster order)."""

    def decorator(fn: Priority) -> Priority:
        SHAM_PATTERNS[name] = fn
        return fn

    return decorator


def _grid(h: int, w: int) -> tuple[Tensor, Tensor]:
    return torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")


@register_pattern("border")
def border_priority(h: int, w: int) -> Tensor:
    """Concentric rings from the image edge inwards; within a ring, corners first, then
    pixels by their distance along the ring to the nearest corner (symmetric filling)."""
    i, j = _grid(h, w)
    ring = torch.minimum(torch.minimum(i, j), torch.minimum(h - 1 - i, w - 1 - j))
    top, left = ring, ring
    bottom, right = h - 1 - ring, w - 1 - ring
    along = torch.maximum(torch.minimum(i - top, bottom - i), torch.minimum(j - left, right - j))
    return ring * (h + w) + along


@register_pattern("corner")
def corner_priority(h: int, w: int) -> Tensor:
    """A block growing from the top-left corner (an off-centre patch)."""
    i, j = _grid(h, w)
    return torch.maximum(i, j) * (h + w) + i + j


def sham_pixel_count(pixels: int, entropy: float) -> int:
    """Largest ``k <= pixels`` with ``ln k <= entropy``."""
    if entropy < 0:
        raise ValueError(f"entropy must be >= 0 nats; got {entropy}.")
    k = min(pixels, int(math.floor(math.exp(entropy) + 1e-9)))
    while k > 1 and math.log(k) > entropy:
        k -= 1
    return max(k, 1)


def sham_target(
    size: Union[int, Sequence[int]] = (7, 7), entropy: float = PAPER_ENTROPY, pattern: str = "border"
) -> Tensor:
    """A 0/1 float map ``[h, w]`` whose entropy is the largest ``ln k <= entropy``."""
    h, w = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"SHAM size must be positive; got {(h, w)}.")
    if pattern not in SHAM_PATTERNS:
        raise ValueError(f"Unknown SHAM pattern {pattern!r}; valid: {', '.join(SHAM_PATTERNS)}.")
    k = sham_pixel_count(h * w, entropy)
    order = torch.argsort(SHAM_PATTERNS[pattern](h, w).flatten(), stable=True)
    target = torch.zeros(h * w)
    target[order[:k]] = 1.0
    return target.reshape(h, w)

"""Shape masks for the synthetic dataset: small pure functions on a normalised grid.

Each shape maps coordinates ``u, v`` in ``[-1, 1]`` (object frame) to a boolean mask.
A registry rather than an if-chain, so a user can add shapes (and so classes).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from ..registry import Registry

Grid = NDArray[np.float64]
Mask = NDArray[np.bool_]
ShapeFn = Callable[[Grid, Grid], Mask]

SHAPES: Registry[str, ShapeFn] = Registry("shape")


def register_shape(name: str, *, replace: bool = False) -> Callable[[ShapeFn], ShapeFn]:
    """Register ``fn(u, v) -> bool mask`` under ``name``; a taken name is refused unless ``replace``."""
    return SHAPES.decorator(name, replace=replace)


@register_shape("disk")
def _disk(u: Grid, v: Grid) -> Mask:
    return u**2 + v**2 <= 0.9**2


@register_shape("square")
def _square(u: Grid, v: Grid) -> Mask:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.75


@register_shape("triangle")
def _triangle(u: Grid, v: Grid) -> Mask:
    return (v <= 0.8) & (v >= -0.9) & (np.abs(u) <= (v + 0.9) / 1.7 * 0.95)


@register_shape("cross")
def _cross(u: Grid, v: Grid) -> Mask:
    inside = np.maximum(np.abs(u), np.abs(v)) <= 0.9
    return inside & ((np.abs(u) <= 0.28) | (np.abs(v) <= 0.28))


@register_shape("ring")
def _ring(u: Grid, v: Grid) -> Mask:
    r2 = u**2 + v**2
    return (r2 <= 0.95**2) & (r2 >= 0.5**2)


@register_shape("diamond")
def _diamond(u: Grid, v: Grid) -> Mask:
    return np.abs(u) + np.abs(v) <= 0.95


@register_shape("xshape")
def _xshape(u: Grid, v: Grid) -> Mask:
    inside = np.maximum(np.abs(u), np.abs(v)) <= 0.85
    gap: Grid = np.abs(np.abs(u) - np.abs(v))
    return inside & (gap <= 0.3)


@register_shape("frame")
def _frame(u: Grid, v: Grid) -> Mask:
    m = np.maximum(np.abs(u), np.abs(v))
    return (m <= 0.9) & (m >= 0.5)


@register_shape("stripes")
def _stripes(u: Grid, v: Grid) -> Mask:
    inside = np.maximum(np.abs(u), np.abs(v)) <= 0.85
    even: Mask = np.floor((u + 1.0) * 3.0).astype(int) % 2 == 0
    return inside & even


@register_shape("halfmoon")
def _halfmoon(u: Grid, v: Grid) -> Mask:
    return (u**2 + v**2 <= 0.9**2) & (v >= 0.0)

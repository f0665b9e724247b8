"""Complexity of the maps themselves, as Quantus 0.6 defines it: Sparseness (Chalasani et
al. 2020; the Gini index of |map|) and Complexity (Bhatt et al. 2020; the entropy of the
|map| as a distribution). Neither runs the model; both are per map, at the map's own
resolution unless ``size`` is given (Quantus scores maps at the input's resolution)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch
from torch import Tensor

from .common import metric, normalise_by_max, to_input_size
from .registry import GroupFn, MetricSpec, register_group


def _flat(maps: Tensor, size: Optional[Sequence[int]]) -> Tensor:
    if not isinstance(maps, Tensor) or maps.dim() != 3:
        raise ValueError(
            f"maps must be [B, h, w]; got {tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__}."
        )
    cam = maps.float() if size is None else to_input_size(maps, size)
    return normalise_by_max(cam.double()).abs().flatten(1)  # Quantus: normalise, then abs


@metric
def sparseness(maps: Tensor, size: Optional[Sequence[int]] = None) -> Tensor:
    """Sparseness (Chalasani et al. 2020; Quantus's ``Sparseness``): the Gini index of |map|.

    After dividing each map by its max and adding 1e-7, as Quantus does: 0 for a uniform
    map, near 1 for a single peak (higher = sparser).

    Args:
        maps: ``[B, h, w]``.
        size: the resolution to score at (Quantus scores at the input's); default the maps'.

    Returns:
        ``[B]``.

    Raises:
        ValueError: ``maps`` not ``[B, h, w]``.

    Example:
        >>> import torch
        >>> peak = torch.zeros(1, 4, 4)
        >>> peak[0, 1, 2] = 1.0
        >>> [round(v, 4) for v in sparseness(torch.cat([peak, torch.ones(1, 4, 4)])).tolist()]
        [0.9375, 0.0]
    """
    a = _flat(maps, size) + 1e-7
    n = a.shape[1]
    a = a.sort(dim=1).values
    i = torch.arange(1, n + 1, dtype=a.dtype, device=a.device)
    return (((2 * i - n - 1) * a).sum(dim=1) / (n * a.sum(dim=1))).float()


@metric
def complexity(maps: Tensor, size: Optional[Sequence[int]] = None) -> Tensor:
    """Complexity (Bhatt et al. 2020; Quantus's ``Complexity``): the entropy of |map| / sum.

    ``log(h*w)`` for a uniform map, 0 for a single peak (lower = simpler).

    Args:
        maps: ``[B, h, w]``.
        size: the resolution to score at (Quantus scores at the input's); default the maps'.

    Returns:
        ``[B]``; NaN for an all-zero map (no distribution).

    Raises:
        ValueError: ``maps`` not ``[B, h, w]``.
    """
    a = _flat(maps, size)
    a = a / a.sum(dim=1, keepdim=True)
    return (-(a * torch.log(a + 1e-12)).sum(dim=1)).float()


def _group(name: str, fn: Callable[[Tensor, Optional[Sequence[int]]], Tensor]) -> GroupFn:
    return lambda maps, size=None: {name: fn(maps, size)}


register_group(
    "sparseness",
    _group("sparseness", sparseness),
    {"sparseness": MetricSpec("sparseness", "higher", family="complexity")},
)
register_group(
    "complexity",
    _group("complexity", complexity),
    {"complexity": MetricSpec("complexity", "lower", family="complexity")},
)

"""Localisation against a ground-truth mask: relevance mass and rank accuracy (Arras et
al. 2022, as Quantus defines them)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .common import metric, to_input_size
from .registry import MASK_METRICS, MetricSpec, register_group


def _masks(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(masks, Tensor) or masks.dim() != 3 or masks.shape[0] != maps.shape[0]:
        got = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"masks must be [B, H, W] with B = {maps.shape[0]} (one per map); got {got}.")
    inside = (masks.float() > 0.5).flatten(1).to(maps.device)
    empty = (~inside.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"masks {empty} are empty: relevance mass and rank need at least one pixel inside each mask.")
    cam = torch.relu(to_input_size(maps, masks.shape[-2:])).flatten(1)
    return cam, inside


@metric
def relevance_mass(maps: Tensor, masks: Tensor) -> Tensor:
    """Relevance mass (Arras et al. 2022; Quantus's ``RelevanceMassAccuracy``).

    The share of each map's positive mass inside its mask, maps resized to the masks.

    Args:
        maps: ``[B, h, w]``.
        masks: ground truth ``[B, H, W]``, inside where > 0.5.

    Returns:
        ``[B]``; 0 for a map that sums to zero.

    Raises:
        ValueError: ``masks`` not ``[B, H, W]``, or an empty mask.

    Example:
        >>> import torch
        >>> maps = torch.zeros(1, 4, 4)
        >>> maps[0, 0, :2] = 1.0
        >>> relevance_mass(maps, torch.eye(4)[None]).tolist()
        [0.5]
    """
    cam, inside = _masks(maps, masks)
    total = cam.sum(dim=1)
    return torch.where(total > 0, (cam * inside).sum(dim=1) / total.clamp(min=1e-30), torch.zeros_like(total))


@metric
def relevance_rank(maps: Tensor, masks: Tensor) -> Tensor:
    """Relevance rank (Arras et al. 2022; Quantus's ``RelevanceRankAccuracy``).

    The share of the K highest pixels of each map that lie inside its mask, K = the mask's
    pixel count. Pixels tied at the K-th place share the remaining top-K places (each gets
    the fraction of its tie group that fits), as a uniformly random tie-break would on
    average: a blank map scores the mask's share of the image wherever it lies.

    Args:
        maps: ``[B, h, w]``, resized to the masks.
        masks: ground truth ``[B, H, W]``, inside where > 0.5.

    Returns:
        ``[B]``.

    Raises:
        ValueError: ``masks`` not ``[B, H, W]``, or an empty mask.
    """
    cam, inside = _masks(maps, masks)
    cam = cam.double()
    ascending = cam.sort(dim=1).values
    n = cam.shape[1]
    above = n - torch.searchsorted(ascending, cam, right=True)  # pixels strictly higher
    tied = n - torch.searchsorted(ascending, cam, right=False) - above  # pixels of the same value (>= 1)
    k = inside.sum(dim=1, keepdim=True)
    credit = (k - above).clamp(min=0).minimum(tied).double() / tied.double()
    return ((credit * inside).sum(dim=1) / k.squeeze(1).double()).float()


def _group(name: str, fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], dict[str, Tensor]]:
    return lambda maps, masks: {name: fn(maps, masks)}


for _name, _fn in (("relevance_mass", relevance_mass), ("relevance_rank", relevance_rank)):
    register_group(
        _name, _group(_name, _fn), {_name: MetricSpec(_name, "higher", needs_masks=True, family="localisation")}
    )
    MASK_METRICS.register(_name, _fn)

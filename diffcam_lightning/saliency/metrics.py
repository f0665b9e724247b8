"""Map statistics from the paper: CAM entropy (nats) and min-max-normalised MSE."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..cams.postprocess import minmax_normalize


def cam_entropy(maps: Tensor) -> Tensor:
    """Shannon entropy (nats) of each map ``[..., h, w]`` as a spatial distribution.

    ``p = m / sum m`` with negative values clipped to 0; a map summing to 0 counts as
    uniform (entropy ``ln(h*w)``), so the result is never NaN.
    """
    if maps.dim() < 2:
        raise ValueError(f"cam_entropy needs maps [..., h, w]; got shape {tuple(maps.shape)}.")
    flat = maps.float().clamp(min=0).flatten(-2)
    total = flat.sum(-1, keepdim=True)
    uniform = total <= 0
    p = torch.where(uniform, torch.full_like(flat, 1.0 / flat.shape[-1]), flat / total.clamp(min=1e-12))
    return -(torch.xlogy(p, p)).sum(-1)


def cam_mse(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample MSE of two maps ``[B, h, w]`` (or ``[h, w]``, broadcast) after per-map
    min-max normalisation: the paper's similarity and susceptibility scores."""
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(
            f"cam_mse needs maps of the same spatial size; got {tuple(a.shape[-2:])} and {tuple(b.shape[-2:])}. "
            "Resize one of them first."
        )
    diff = minmax_normalize(a.float()) - minmax_normalize(b.float())
    return diff.pow(2).mean(dim=(-2, -1))


def max_entropy(h: int, w: int) -> float:
    """The entropy of a uniform ``h x w`` map, the upper bound of ``cam_entropy``."""
    return math.log(h * w)

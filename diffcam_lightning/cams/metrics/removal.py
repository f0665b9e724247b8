"""Feature removal as Quantus 0.6 does it, shared by Pixel Flipping, Region Perturbation,
IROF and Monotonicity Correlation: the features (every channel value of every pixel, the
map broadcast over the channels), their removal order, and the scores of the inputs with
one step (or every step so far) of features replaced by a fill value."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .common import Score, positive_int, scores_of_rows, to_input_size

DEFAULT_STEPS = 20  # removal steps when features_in_step is not given (Quantus's default 1 costs C*H*W forwards)


def features(x: Tensor, maps: Tensor) -> Tensor:
    """The map at the input's size, broadcast over the channels and flattened: ``[B, C*H*W]``."""
    cam = to_input_size(maps.to(x.device), x.shape[-2:])
    return cam[:, None].expand(-1, x.shape[1], -1, -1).reshape(len(x), -1)


def step_size(x: Tensor, value: Optional[int]) -> int:
    """``value`` checked, or by default the channels of ``ceil(H*W / DEFAULT_STEPS)`` pixels."""
    if value is not None:
        return positive_int("features_in_step", value)
    return x.shape[1] * -(-x.shape[-2] * x.shape[-1] // DEFAULT_STEPS)


def rank_of(order: Tensor) -> Tensor:
    """Rank of each position given the positions in order (``order[b, r]`` = position of rank r)."""
    out = torch.empty_like(order)
    out.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return out


def removal_scores(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    step_of: Tensor,
    steps: int,
    fill: Tensor,
    score: Score,
    batch_size: int,
    progress: Optional[bool],
    desc: str,
    cumulative: bool = True,
) -> Tensor:
    """Target scores ``[B, steps, R]`` of the inputs with features removed: row ``(b, k, r)``
    is ``x[b]`` with the features whose ``step_of [B, P]`` is ``<= k`` (``cumulative``) or
    ``== k`` replaced by ``fill [B, 1 or steps, R, 1 or P]``. ``P`` is ``C*H*W`` (one step
    per feature) or ``H*W`` (per pixel, all its channels at once)."""
    b, positions = len(x), step_of.shape[1]
    repeats = fill.shape[2]
    fill = fill.to(x.dtype).expand(b, steps, repeats, fill.shape[3])
    flat = x.reshape(b, -1, positions)

    def build(start: int, stop: int) -> tuple[Tensor, Tensor]:
        rows = torch.arange(start, stop, device=x.device)
        sample, k, r = rows // (steps * repeats), rows // repeats % steps, rows % repeats
        chosen = step_of[sample]
        removed = chosen <= k[:, None] if cumulative else chosen == k[:, None]
        perturbed = torch.where(removed[:, None], fill[sample, k, r][:, None], flat[sample])
        return perturbed.reshape(-1, *x.shape[1:]), targets[sample]

    scores = scores_of_rows(model, b * steps * repeats, build, score, batch_size, progress, desc)
    return scores.reshape(b, steps, repeats)

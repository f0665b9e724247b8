"""The saliency loss: MSE between a model's CAM and a target map, on the CAM grid.

Both sides are min-max normalised per map (``(m - min) / (max - min + eps)``), so a
constant CAM or target becomes all zeros instead of dividing by zero: no NaN can reach
the loss. Targets given at image resolution are resized to the CAM grid first
(area interpolation when shrinking, bilinear when growing).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor
from torch.nn import functional as F

from ..cams.postprocess import minmax_normalize


def resize_target(target: Tensor, size: tuple[int, int]) -> Tensor:
    """``[B, H, W]`` (or ``[H, W]``) -> ``[B, h, w]`` on the CAM grid, min-max normalised."""
    t = target.float()
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise ValueError(f"A saliency target must be [H, W] or [B, H, W]; got shape {tuple(target.shape)}.")
    if tuple(t.shape[-2:]) != tuple(size):
        shrink = t.shape[-2] >= size[0] and t.shape[-1] >= size[1]
        mode = "area" if shrink else "bilinear"
        kwargs = {} if shrink else {"align_corners": False}
        t = F.interpolate(t.unsqueeze(1), size=tuple(size), mode=mode, **kwargs).squeeze(1)
    return minmax_normalize(t)


def saliency_mse(cams: Tensor, targets: Tensor) -> Tensor:
    """Per-sample MSE ``[B]`` of min-max-normalised CAMs ``[B, h, w]`` and targets
    (any resolution, ``[B, H, W]`` or one ``[H, W]`` map for the whole batch)."""
    if cams.dim() != 3:
        raise ValueError(f"cams must be [B, h, w]; got shape {tuple(cams.shape)}.")
    h, w = cams.shape[-2:]
    t = resize_target(targets.to(cams.device), (h, w))
    return (minmax_normalize(cams.float()) - t).pow(2).mean(dim=(-2, -1))


def saliency_loss(cams: Tensor, targets: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, int]:
    """Mean of :func:`saliency_mse` over the samples where ``mask`` is True.

    Returns ``(loss, count)``. With no sample selected the loss is a differentiable zero
    (``0 * cams.sum()``), never the NaN of an empty mean.
    """
    per_sample = saliency_mse(cams, targets)
    if mask is None:
        return per_sample.mean(), per_sample.numel()
    mask = mask.to(per_sample.device).bool().reshape(-1)
    if mask.numel() != per_sample.numel():
        raise ValueError(f"mask has {mask.numel()} entries for a batch of {per_sample.numel()}.")
    count = int(mask.sum())
    if count == 0:
        return cams.sum() * 0.0, 0
    return (per_sample * mask).sum() / count, count

"""ScoreCAM (Wang et al. 2020) with pytorch-grad-cam's maps and fewer masked forwards.

Each channel ``A_k``, upsampled to the input (bilinear, ``align_corners=True``) and
min-max normalised (eps 1e-8), masks the input; the target logit of the masked input is the
channel's score, and ``softmax`` over the channels weights ``sum_k w_k A_k``. The masked
forwards are nearly all of the cost, so this module runs as few as give the same numbers:

- a channel whose upsampled map is constant (dead ReLU channels: 20-50 % of a CNN's last
  stage) has an all-zero mask, so its masked input is the zero image for every image and
  every such channel: one forward of a zero image scores them all, exactly as the full
  computation would;
- identical images in the batch (one image asked for several target classes) share their
  masked forwards: the logits of a masked input serve every target class the call asks for;
- the remaining masks from all images are packed into full batches of ``batch_size`` and
  run under ``torch.inference_mode`` (channels-last on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from ..outputs import logits_of
from .registry import CAMContext, weighted_sum

_EPS = 1e-8  # pytorch-grad-cam's min-max guard


@dataclass
class _Plan:
    """Which batch rows share an image (``image_of``), and for each distinct image the
    target classes asked for it (``classes [n, T]``, padded) and each row's column."""

    distinct: Tensor  # [n] batch index of each distinct image
    image_of: Tensor  # [B] index into ``distinct``
    classes: Tensor  # [n, T] class indices asked for each distinct image
    column: Tensor  # [B] column of the row's target in ``classes``


def _plan(inputs: Tensor, targets: Tensor) -> _Plan:
    """Group identical images (exact equality, checked only where a cheap checksum matches)."""
    b = inputs.shape[0]
    flat = inputs.reshape(b, -1)
    checksum = flat.sum(dim=1).tolist()
    distinct: list[int] = []
    image_of: list[int] = []
    for row in range(b):
        match = next(
            (
                i
                for i, first in enumerate(distinct)
                if checksum[first] == checksum[row] and torch.equal(flat[first], flat[row])
            ),
            None,
        )
        if match is None:
            distinct.append(row)
            match = len(distinct) - 1
        image_of.append(match)
    asked: list[list[int]] = [[] for _ in distinct]
    column: list[int] = []
    for cls, image in zip(targets.tolist(), image_of):  # one device sync, not one per row
        if cls not in asked[image]:
            asked[image].append(cls)
        column.append(asked[image].index(cls))
    width = max(len(a) for a in asked)
    classes = [a + [a[0]] * (width - len(a)) for a in asked]
    device = inputs.device
    return _Plan(
        torch.tensor(distinct, device=device),
        torch.tensor(image_of, device=device),
        torch.tensor(classes, device=device),
        torch.tensor(column, device=device),
    )


def _channel_masks(acts: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Upsampled, min-max normalised masks ``[n, 1, H, W]`` of ``acts [n, h, w]`` and
    which of them are constant (all exactly zero after normalisation)."""
    up = nn.functional.interpolate(acts.unsqueeze(1), size=size, mode="bilinear", align_corners=True)
    lo = up.amin(dim=(2, 3), keepdim=True)
    hi = up.amax(dim=(2, 3), keepdim=True)
    return (up - lo) / (hi - lo + _EPS), (hi == lo).flatten()


class _MaskedForwards:
    """Packs masked inputs of any images into full batches of ``batch_size`` and files each
    row's logits of the asked classes under (image, channel). Image ``-1`` is the zero image."""

    def __init__(self, model: nn.Module, classes: Tensor, channels: int, batch_size: int) -> None:
        self.model, self.classes, self.batch_size = model, classes, batch_size
        self.scores = torch.empty(classes.shape[0], channels, classes.shape[1], device=classes.device)
        self.zero_logits: Optional[Tensor] = None
        self._pending: list[tuple[Tensor, Tensor, Tensor]] = []
        self._count = 0

    def add(self, masked: Tensor, images: Tensor, channels: Tensor) -> None:
        self._pending.append((masked, images, channels))
        self._count += masked.shape[0]
        while self._count >= self.batch_size:
            self._run(self.batch_size)

    def finish(self) -> None:
        while self._count:
            self._run(min(self._count, self.batch_size))

    def _run(self, rows: int) -> None:
        batch, images, channels = (torch.cat(parts) for parts in zip(*self._pending))
        self._pending = [(batch[rows:], images[rows:], channels[rows:])]
        self._count -= rows
        logits = logits_of(self.model(channels_last_on_cpu(batch[:rows]))).float()
        images, channels = images[:rows], channels[:rows]
        real = images >= 0
        self.scores[images[real], channels[real]] = logits[real].gather(1, self.classes[images[real]])
        if not bool(real.all()):
            self.zero_logits = logits[~real][0]


def channels_last_on_cpu(batch: Tensor) -> Tensor:
    """Channels-last on CPU: oneDNN's convolutions run 1.07x (resnet18, 128 px) to 1.5x
    (the synthetic chain's test_resnet, 64 px) faster on it; logits move by ~2e-6."""
    return batch.contiguous(memory_format=torch.channels_last) if batch.device.type == "cpu" else batch


def channel_scores(model: nn.Module, inputs: Tensor, acts: Tensor, plan: _Plan, batch_size: int) -> Tensor:
    """Scores ``[n, K, T]``: the logit of each asked class for each distinct image masked
    by each of its channels. Constant channels get the zero image's logits."""
    n, k = plan.distinct.numel(), acts.shape[1]
    size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    forwards = _MaskedForwards(model, plan.classes, k, batch_size)
    constant = torch.zeros(n, k, dtype=torch.bool, device=inputs.device)
    for image, row in enumerate(plan.distinct.tolist()):
        for start in range(0, k, batch_size):  # masks built per chunk: memory ~ batch_size, not B*K
            masks, flat = _channel_masks(acts[row, start : start + batch_size], size)
            constant[image, start : start + masks.shape[0]] = flat
            keep = (~flat).nonzero().flatten()
            if keep.numel():
                masked = masks[keep].to(inputs.dtype) * inputs[row]
                forwards.add(masked, torch.full_like(keep, image), keep + start)
    if bool(constant.any()):  # one zero image scores every constant channel of every image
        minus_one = torch.full((1,), -1, dtype=torch.long, device=inputs.device)
        forwards.add(torch.zeros_like(inputs[:1]), minus_one, minus_one)
    forwards.finish()
    scores = forwards.scores
    if forwards.zero_logits is not None:
        fill = forwards.zero_logits[plan.classes].unsqueeze(1)  # [n, 1, T]
        scores = torch.where(constant.unsqueeze(-1), fill, scores)
    return scores


def scorecam(ctx: CAMContext) -> Tensor:
    """ScoreCAM maps ``[B, h, w]`` (raw; the engine post-processes them)."""
    if ctx.model is None or ctx.inputs is None or ctx.targets is None:
        raise ValueError("scorecam needs the model, the input and the targets in its context.")
    acts = ctx.activations.detach()
    inputs = ctx.inputs.detach()
    plan = _plan(inputs, ctx.targets)
    with torch.inference_mode():
        scores = channel_scores(ctx.model, inputs, acts, plan, max(1, int(ctx.perturbation_batch_size)))
        per_row = scores[plan.image_of, :, plan.column]  # [B, K]
        weights = torch.softmax(per_row, dim=1)
    return weighted_sum(weights.clone(), acts)

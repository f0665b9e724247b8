"""Perturbation methods: the target layer's channels scored by running the model again
on perturbed inputs (ScoreCAM, its own module) or perturbed activations (AblationCAM)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..outputs import _logits
from .registry import CAMContext, weighted_sum
from .scorecam import scorecam

__all__ = ["ablationcam", "scorecam"]


def ablationcam(ctx: CAMContext) -> Tensor:
    """AblationCAM (Desai & Ramaswamy 2020): the weight of channel k is the relative drop
    of the target logit when channel k of the target layer's output is set to zero,
    ``(y_c - y_c^k) / y_c``. All (image, channel) ablations run as batched no-grad
    forwards; the target layer's output is replaced by a forward hook (as pytorch-grad-cam,
    which zeroes a channel when the layer's minimum is 0; for layers with negative outputs
    it substitutes ``min - 1e7`` instead, a choice this implementation does not copy)."""
    if ctx.model is None or ctx.inputs is None or ctx.targets is None or ctx.layer is None:
        raise ValueError("ablationcam needs the model, its target layer, the input and the targets in its context.")
    acts = ctx.activations.detach()
    b, k = acts.shape[:2]
    inputs = ctx.inputs.detach()
    rows = torch.arange(b * k, device=acts.device)
    owner, channel = rows // k, rows % k
    step = max(1, int(ctx.scorecam_batch_size))
    chunk: dict[str, Tensor] = {}

    channel_dim = 1 if ctx.layout is None else ctx.layout.channel_dim
    if channel_dim is None:
        raise ValueError("ablationcam needs a named layout ('nchw', 'nhwc' or 'tokens'), not a layout callable.")
    raw = (ctx.raw_activations if ctx.raw_activations is not None else acts).detach()

    def ablate(module: nn.Module, args, output: Tensor) -> Tensor:
        ablated = raw[chunk["owner"]].to(output.dtype).clone().movedim(channel_dim, 1)
        ablated[torch.arange(len(ablated), device=acts.device), chunk["channel"]] = 0
        return ablated.movedim(1, channel_dim)

    scores = []
    with torch.no_grad():
        original = _logits(ctx.model(inputs)).gather(1, ctx.targets[:, None]).float().squeeze(1)
    handle = ctx.layer.register_forward_hook(ablate)
    try:
        with torch.no_grad():
            for start in range(0, b * k, step):
                chunk["owner"], chunk["channel"] = owner[start : start + step], channel[start : start + step]
                logits = _logits(ctx.model(inputs[chunk["owner"]]))
                scores.append(logits.gather(1, ctx.targets[chunk["owner"], None]).float().squeeze(1))
    finally:
        handle.remove()
    ablated = torch.cat(scores).reshape(b, k)
    base = original[:, None]
    weights = (base - ablated) / torch.where(base.abs() > 1e-12, base, torch.full_like(base, 1e-12))
    return weighted_sum(weights, acts)

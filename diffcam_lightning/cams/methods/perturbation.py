"""Perturbation methods: the target layer's channels scored by running the model again
on perturbed inputs (ScoreCAM, its own module; SS-CAM and IS-CAM, torchcam's smoothed
ScoreCAMs) or perturbed activations (AblationCAM)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..modes import eval_mode
from ..outputs import logits_of
from ..targets import BACKPROP_TARGETS
from .registry import CAMContext, present, require, weighted_sum
from .scorecam import channels_last_on_cpu, scorecam

__all__ = ["ablationcam", "iscam", "scorecam", "smoothgradcampp", "sscam"]


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
    step = max(1, int(ctx.perturbation_batch_size))
    chunk: dict[str, Tensor] = {}

    channel_dim = 1 if ctx.layout is None else ctx.layout.channel_dim
    if channel_dim is None:
        raise ValueError("ablationcam needs a named layout ('nchw', 'nhwc' or 'tokens'), not a layout callable.")
    raw = (ctx.raw_activations if ctx.raw_activations is not None else acts).detach()

    def ablate(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        ablated = raw[chunk["owner"]].to(output.dtype).clone().movedim(channel_dim, 1)
        ablated[torch.arange(len(ablated), device=acts.device), chunk["channel"]] = 0
        return ablated.movedim(1, channel_dim)

    scores = []
    with torch.no_grad():
        original = logits_of(ctx.model(inputs)).gather(1, ctx.targets[:, None]).float().squeeze(1)
    handle = ctx.layer.register_forward_hook(ablate)
    try:
        with torch.no_grad():
            for start in range(0, b * k, step):
                chunk["owner"], chunk["channel"] = owner[start : start + step], channel[start : start + step]
                logits = logits_of(ctx.model(inputs[chunk["owner"]]))
                scores.append(logits.gather(1, ctx.targets[chunk["owner"], None]).float().squeeze(1))
    finally:
        handle.remove()
    ablated = torch.cat(scores).reshape(b, k)
    base = original[:, None]
    weights = (base - ablated) / torch.where(base.abs() > 1e-12, base, torch.full_like(base, 1e-12))
    return weighted_sum(weights, acts)


# ---------------------------------------------------------------- torchcam's smoothed ScoreCAMs

_TORCHCAM_EPS = 1e-8


def _upsampled_masks(acts: Tensor, size: tuple[int, int]) -> Tensor:
    """torchcam's masks: each channel min-max scaled at the layer's grid (``(a - min) /
    (max + 1e-8)``), then bilinearly upsampled to the input (``align_corners=False``)."""
    shifted = acts - acts.amin(dim=(2, 3), keepdim=True)
    scaled = shifted / (shifted.amax(dim=(2, 3), keepdim=True) + _TORCHCAM_EPS)
    return nn.functional.interpolate(scaled, size=size, mode="bilinear", align_corners=False)


def _masked_scores(ctx: CAMContext, masks: Tensor, scale: float = 1.0) -> Tensor:
    """The target logit of every image times each of its masks ``[B, K, H, W]`` (times
    ``scale``), minus the unmasked image's: ``[B, K]``, in batches of ``perturbation_batch_size``."""
    model = present(ctx.model, "a ScoreCAM", "model")
    inputs = present(ctx.inputs, "a ScoreCAM", "inputs").detach()
    targets = present(ctx.targets, "a ScoreCAM", "targets")
    b, k = masks.shape[:2]
    owner = torch.arange(b, device=inputs.device).repeat_interleave(k)
    flat = masks.reshape(b * k, 1, *masks.shape[2:])
    step = max(1, int(ctx.perturbation_batch_size))
    with eval_mode(model), torch.inference_mode():
        base = logits_of(model(inputs)).gather(1, targets[:, None]).squeeze(1).float()
        scores = []
        for start in range(0, b * k, step):
            rows = owner[start : start + step]
            batch = channels_last_on_cpu(scale * (flat[start : start + step] * inputs[rows]))
            scores.append(logits_of(model(batch)).gather(1, targets[rows, None]).squeeze(1).float() - base[rows])
    return torch.cat(scores).reshape(b, k)


def noise(shape: torch.Size, std: float, generator: torch.Generator) -> Tensor:
    """``N(0, std^2)`` draws on the CPU from ``generator``: the draws of torchcam's
    ``Normal(0, std).sample(shape)`` after ``torch.manual_seed(seed)``."""
    return torch.normal(torch.zeros(()).expand(shape), torch.full((), float(std)).expand(shape), generator=generator)


def sscam(ctx: CAMContext, num_samples: int = 35, std: float = 2.0) -> Tensor:
    """SS-CAM (Wang et al. 2020), as torchcam 0.5: ScoreCAM's scores averaged over
    ``num_samples`` masks with Gaussian noise ``N(0, std^2)`` added to the upsampled
    activations (drawn from ``ctx.seed``, not the global RNG)."""
    require(ctx, "sscam", "model", "inputs", "targets")
    acts = ctx.activations.detach()
    inputs = present(ctx.inputs, "sscam", "inputs")
    masks = _upsampled_masks(acts, (int(inputs.shape[-2]), int(inputs.shape[-1])))
    generator = torch.Generator().manual_seed(ctx.seed)
    total = torch.zeros(acts.shape[:2], device=acts.device)
    for _ in range(num_samples):
        total += _masked_scores(ctx, masks + noise(masks.shape, std, generator).to(masks.device, masks.dtype))
    return weighted_sum(torch.softmax(total / num_samples, dim=1), acts)


def iscam(ctx: CAMContext, num_samples: int = 10) -> Tensor:
    """IS-CAM (Naidu et al. 2020), as torchcam 0.5: ScoreCAM's scores averaged over
    masked inputs scaled by the cumulative coefficients ``sum_{j<=i} j / N``."""
    require(ctx, "iscam", "model", "inputs", "targets")
    acts = ctx.activations.detach()
    inputs = present(ctx.inputs, "iscam", "inputs")
    masks = _upsampled_masks(acts, (int(inputs.shape[-2]), int(inputs.shape[-1])))
    total = torch.zeros(acts.shape[:2], device=acts.device)
    coeff = 0.0
    for i in range(num_samples):
        coeff += (i + 1) / num_samples
        total += _masked_scores(ctx, masks, coeff)
    return weighted_sum(torch.softmax(total / num_samples, dim=1), acts)


def _noisy_gradients(ctx: CAMContext, names: list[str], num_samples: int, std: float) -> dict[str, Tensor]:
    """SmoothGradCAM++ maps for every target in ``names`` from ``num_samples`` noisy
    forwards (eval mode, modes restored), each shared by all the targets."""
    method = "smoothgradcam++"
    x = present(ctx.inputs, method, "inputs").detach()
    model = present(ctx.model, method, "model")
    targets = present(ctx.targets, method, "targets")
    layout = present(ctx.layout, method, "layout")
    generator = torch.Generator().manual_seed(ctx.seed)
    captured: list[Tensor] = []

    def capture(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        captured.append(output)
        return output.clone()

    sums: dict[str, list[Tensor | float]] = {name: [0.0, 0.0] for name in names}  # sum of g^2, sum of g^3
    last: dict[str, Tensor] = {}
    handle = present(ctx.layer, method, "layer").register_forward_hook(capture)
    try:
        with eval_mode(model), torch.enable_grad():
            for _ in range(num_samples):
                captured.clear()
                noisy = (x + noise(x.shape, std, generator).to(x.device, x.dtype)).requires_grad_()
                logits = logits_of(model(noisy))
                for i, name in enumerate(names):
                    vector = BACKPROP_TARGETS[name](logits, targets).detach()
                    (grad,) = torch.autograd.grad(logits, captured[0], vector, retain_graph=i < len(names) - 1)
                    grad = layout.convert(grad).float()
                    sums[name][0] = sums[name][0] + grad.pow(2)
                    sums[name][1] = sums[name][1] + grad.pow(3)
                    last[name] = grad
            final = layout.convert(captured[0].detach()).float()
    finally:
        handle.remove()
    maps = {}
    for name in names:
        grad2, grad3 = (s / num_samples for s in sums[name])
        alpha = grad2 / (2 * grad2 + (grad3 * ctx.activations).sum(dim=(2, 3), keepdim=True) + _TORCHCAM_EPS)
        maps[name] = weighted_sum((alpha * last[name].clamp(min=0)).sum(dim=(2, 3)), final)
    return maps


def smoothgradcampp(ctx: CAMContext, num_samples: int = 4, std: float = 0.3) -> Tensor:
    """SmoothGradCAM++ (Omeiza et al. 2019), as torchcam 0.5: GradCAM++'s alpha from the
    gradients' 2nd and 3rd powers averaged over ``num_samples`` inputs with noise
    ``N(0, std^2)`` (drawn from ``ctx.seed``); like torchcam, the weights' ReLU(gradient)
    and the summed activations are those of the last noisy input."""
    require(ctx, "smoothgradcam++", "model", "inputs", "targets", "layer", "layout")
    key = f"smoothgrad:{num_samples}:{std}"
    if key not in ctx.cache:
        backprop = present(ctx.backprop, "smoothgradcam++", "backprop")
        names = list(
            dict.fromkeys(m.backprop for m in ctx.methods if m.compute is smoothgradcampp and m.backprop is not None)
        )
        ctx.cache[key] = _noisy_gradients(ctx, names or [backprop], num_samples, std)
    maps: dict[str, Tensor] = ctx.cache[key]
    return maps[present(ctx.backprop, "smoothgradcam++", "backprop")]

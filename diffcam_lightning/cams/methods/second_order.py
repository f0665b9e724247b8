"""Second-order and bias-gradient methods. ShapleyCAM: weights from the gradient and the
Hessian of the target at the target layer. They reuse the call's forward: the head's graph (A -> logits) is kept, and
for each target one more VJP with ``create_graph`` gives ``dT/dA`` differentiably, then one
Hessian-vector product gives ``H A``. Only the small head is differentiated again. FullGrad: the gradients at
every bias of the network and at the input, from its own forward shared by all its targets."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..modes import eval_mode
from ..outputs import logits_of
from ..postprocess import resize
from ..targets import BACKPROP_TARGETS
from .registry import CAMContext, present, require, weighted_sum


def hessian_times_activations(ctx: CAMContext, target: str) -> Tensor:
    """``H_T A`` in ``[B, K, h, w]`` for the backprop target ``target``, the Hessian of
    ``T`` w.r.t. ``A`` (target's own curvature included); cached per call and target."""
    key = f"hvp:{target}"
    if key not in ctx.cache:
        require(ctx, "a second-order method", "head", "targets", "layout")
        logits, raw = present(ctx.head, "a second-order method", "head")
        targets = present(ctx.targets, "a second-order method", "targets")
        layout = present(ctx.layout, "a second-order method", "layout")
        with torch.enable_grad():
            vector = BACKPROP_TARGETS[target](logits, targets)  # in the graph: its curvature counts
            (grad,) = torch.autograd.grad(logits, raw, grad_outputs=vector, create_graph=True, retain_graph=True)
            if grad.requires_grad:
                (hvp,) = torch.autograd.grad(grad, raw, grad_outputs=raw.detach(), retain_graph=True, allow_unused=True)
            else:  # a head linear in A with a target linear in y: no curvature
                hvp = None
        hvp = torch.zeros_like(raw) if hvp is None else hvp
        ctx.cache[key] = layout.convert(hvp.detach()).float()
    cached: Tensor = ctx.cache[key]
    return cached


def shapleycam(ctx: CAMContext) -> Tensor:
    """ShapleyCAM (Cai 2025): GradCAM's weights with the second-order term of a Taylor
    Shapley value, ``w_k = mean_hw (g - H A / 2)_k`` (pytorch-grad-cam's ShapleyCAM)."""
    weights = (ctx.grad - 0.5 * hessian_times_activations(ctx, present(ctx.backprop, "shapleycam", "backprop"))).mean(
        dim=(2, 3)
    )
    return weighted_sum(weights, ctx.activations)


# ---------------------------------------------------------------- bias gradients

_EPS = 1e-7  # pytorch-grad-cam's per-map min-max guard in FullGrad


def bias_layers(model: nn.Module) -> list[tuple[nn.Module, Tensor]]:
    """The layers whose bias FullGrad reads and that bias: ``nn.Conv2d`` and
    ``nn.BatchNorm2d`` with a bias (exact types, as pytorch-grad-cam: a subclass such as
    timm's ``BatchNormAct2d`` may fold an activation into its output), BatchNorm's bias
    taken at its running statistics, ``beta - mu * gamma / sqrt(var + eps)``."""
    found: list[tuple[nn.Module, Tensor]] = []
    for module in model.modules():
        if type(module) not in (nn.Conv2d, nn.BatchNorm2d) or not isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
            continue
        if module.bias is None:
            continue
        bias = module.bias.detach()
        if isinstance(module, nn.BatchNorm2d):
            if module.running_mean is None or module.running_var is None:
                raise ValueError(
                    "fullgrad needs BatchNorm2d layers with running statistics (track_running_stats=True)."
                )
            bias = bias - module.running_mean * module.weight.detach() / torch.sqrt(module.running_var + module.eps)
        found.append((module, bias))
    return found


def _scaled_channels(maps: Tensor) -> Tensor:
    """Per image, the channels of ``|maps| [B, C, h, w]`` min-max scaled and summed: ``[B, h, w]``."""
    lo = maps.amin(dim=(2, 3), keepdim=True)
    shifted = maps - lo
    return (shifted / (_EPS + shifted.amax(dim=(2, 3), keepdim=True))).sum(dim=1)


def _fullgrad_maps(ctx: CAMContext, names: list[str]) -> dict[str, Tensor]:
    """FullGrad maps at input size for every target in ``names``: one forward of the whole
    model (in eval mode, modes restored) and one backward per target."""
    model = present(ctx.model, "fullgrad", "model")
    inputs = present(ctx.inputs, "fullgrad", "inputs")
    targets = present(ctx.targets, "fullgrad", "targets")
    size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    layers = bias_layers(model)
    outputs: list[Tensor] = []

    def capture(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        outputs.append(output)
        return output.clone()  # an in-place ReLU after the layer must not rewrite what is differentiated

    handles = [module.register_forward_hook(capture) for module, _ in layers]
    x = inputs.detach().clone().requires_grad_()
    try:
        with eval_mode(model), torch.enable_grad():
            logits = logits_of(model(x))
            maps = {}
            for i, name in enumerate(names):
                vector = BACKPROP_TARGETS[name](logits, targets).detach()
                grads = torch.autograd.grad(logits, [x, *outputs], grad_outputs=vector, retain_graph=i < len(names) - 1)
                total = _scaled_channels((x.detach() * grads[0]).abs())
                for (_, bias), grad in zip(layers, grads[1:]):
                    scaled = _scaled_channels((bias[None, :, None, None] * grad).abs())
                    total = total + resize(scaled, size)  # resizing is linear: after the channel sum
                maps[name] = total.float()
    finally:
        for handle in handles:
            handle.remove()
    return maps


def fullgrad(ctx: CAMContext) -> Tensor:
    """FullGrad (Srinivas & Fleuret 2019), as pytorch-grad-cam: ``|x * dT/dx|`` plus, for
    every bias layer, ``|b * dT/dz|`` at its output ``z``, each channel min-max scaled,
    summed at input size (the target layer is not used). The forward is shared by every
    FullGrad target of the call."""
    require(ctx, "fullgrad", "model", "inputs", "targets")
    if "fullgrad" not in ctx.cache:
        backprop = present(ctx.backprop, "fullgrad", "backprop")
        names = list(dict.fromkeys(m.backprop for m in ctx.methods if m.compute is fullgrad and m.backprop is not None))
        ctx.cache["fullgrad"] = _fullgrad_maps(ctx, names or [backprop])
    maps: dict[str, Tensor] = ctx.cache["fullgrad"]
    return maps[present(ctx.backprop, "fullgrad", "backprop")]

"""Second-order methods: weights from the gradient and the Hessian of the target at the
target layer. They reuse the call's forward: the head's graph (A -> logits) is kept, and
for each target one more VJP with ``create_graph`` gives ``dT/dA`` differentiably, then one
Hessian-vector product gives ``H A``. Only the small head is differentiated again."""

from __future__ import annotations

import torch
from torch import Tensor

from ..targets import BACKPROP_TARGETS
from .registry import CAMContext, require, weighted_sum


def hessian_times_activations(ctx: CAMContext, target: str) -> Tensor:
    """``H_T A`` in ``[B, K, h, w]`` for the backprop target ``target``, the Hessian of
    ``T`` w.r.t. ``A`` (target's own curvature included); cached per call and target."""
    key = f"hvp:{target}"
    if key not in ctx.cache:
        require(ctx, "a second-order method", "head", "targets", "layout")
        logits, raw = ctx.head
        with torch.enable_grad():
            vector = BACKPROP_TARGETS[target](logits, ctx.targets)  # in the graph: its curvature counts
            (grad,) = torch.autograd.grad(logits, raw, grad_outputs=vector, create_graph=True, retain_graph=True)
            if grad.requires_grad:
                (hvp,) = torch.autograd.grad(grad, raw, grad_outputs=raw.detach(), retain_graph=True, allow_unused=True)
            else:  # a head linear in A with a target linear in y: no curvature
                hvp = None
        hvp = torch.zeros_like(raw) if hvp is None else hvp
        ctx.cache[key] = ctx.layout.convert(hvp.detach()).float()
    return ctx.cache[key]


def shapleycam(ctx: CAMContext) -> Tensor:
    """ShapleyCAM (Cai 2025): GradCAM's weights with the second-order term of a Taylor
    Shapley value, ``w_k = mean_hw (g - H A / 2)_k`` (pytorch-grad-cam's ShapleyCAM)."""
    weights = (ctx.grad - 0.5 * hessian_times_activations(ctx, ctx.backprop)).mean(dim=(2, 3))
    return weighted_sum(weights, ctx.activations)

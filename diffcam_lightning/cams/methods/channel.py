"""Channel weightings: ``sum_k w_k A_k`` (or an element-wise variant) from ``A`` and the
one batched VJP's ``dT/dA``, plus the weightings that need no gradient at all (FEM,
RandomCAM, the original CAM's head weights)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..outputs import unwrapped
from .registry import CAMContext, MapFunction, present, require, weighted_sum

Weighting = Callable[[Tensor, Tensor], Tensor]


def gradcam_weights(activations: Tensor, grad: Tensor) -> Tensor:
    """GradCAM (paper eq. 2): spatial mean of the gradient."""
    return grad.mean(dim=(2, 3))


def gradcam_plusplus_weights(activations: Tensor, grad: Tensor) -> Tensor:
    """GradCAM++ (Chattopadhyay et al., eq. 19) with exponential-free closed form."""
    grad2 = grad.pow(2)
    grad3 = grad2 * grad
    sum_activations = activations.sum(dim=(2, 3), keepdim=True)
    alpha = grad2 / (2 * grad2 + sum_activations * grad3 + 1e-6)
    alpha = torch.where(grad != 0, alpha, torch.zeros_like(alpha))
    return (alpha * grad.clamp(min=0)).sum(dim=(2, 3))


def xgradcam_weights(activations: Tensor, grad: Tensor) -> Tensor:
    """XGradCAM: activation-weighted gradient, normalised by the channel's mass."""
    sum_activations = activations.sum(dim=(2, 3), keepdim=True)
    return (grad * activations / (sum_activations + 1e-7)).sum(dim=(2, 3))


def channel_cam(weighting: Weighting) -> MapFunction:
    """The map of a weighting ``(A, g) -> w [B, K]``."""

    def compute(ctx: CAMContext) -> Tensor:
        return weighted_sum(weighting(ctx.activations, ctx.grad), ctx.activations)

    compute.__doc__ = weighting.__doc__
    return compute


def hirescam(ctx: CAMContext) -> Tensor:
    """HiResCAM: element-wise gradient x activation, summed over channels."""
    return (ctx.grad * ctx.activations).sum(dim=1)


def layercam(ctx: CAMContext) -> Tensor:
    """LayerCAM (Jiang et al. 2021): activations weighted by the positive part of the
    gradient at each position, summed over channels."""
    return (ctx.grad.clamp(min=0) * ctx.activations).sum(dim=1)


def gradcam_elementwise(ctx: CAMContext) -> Tensor:
    """GradCAMElementWise (pytorch-grad-cam): ReLU of gradient x activation before the
    channel sum, so negative evidence in one channel cannot cancel another's."""
    return (ctx.grad * ctx.activations).clamp(min=0).sum(dim=1)


# ---------------------------------------------------------------- no gradient


def fem(ctx: CAMContext, k: float = 2.0) -> Tensor:
    """FEM (Fuad et al. 2020): a channel's weight is the share of its positions above
    its own ``mean + k * std`` (k = 2, population std, as pytorch-grad-cam)."""
    acts = ctx.activations
    mean = acts.mean(dim=(2, 3), keepdim=True)
    std = acts.std(dim=(2, 3), keepdim=True, correction=0)
    weights = (acts > mean + k * std).to(acts.dtype).mean(dim=(2, 3))
    return weighted_sum(weights, acts)


def randomcam(ctx: CAMContext) -> Tensor:
    """RandomCAM (a sanity baseline): weights uniform in [-1, 1], drawn by NumPy's
    ``RandomState(seed)``: the draws of pytorch-grad-cam after ``np.random.seed(seed)``.
    The global RNGs are left as they were."""
    b, k = ctx.activations.shape[:2]
    weights = np.random.RandomState(ctx.seed).uniform(-1, 1, size=(b, k))
    acts = ctx.activations
    return weighted_sum(torch.as_tensor(weights, dtype=torch.float64, device=acts.device), acts.double()).float()


def pooled_linear_head(model: nn.Module) -> nn.Linear:
    """The classifier of a pooled linear head: the model's last ``nn.Linear``."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"cam needs a linear classifier after global pooling; {type(model).__name__} has no nn.Linear."
        )
    return linears[-1]


def cam(ctx: CAMContext) -> Tensor:
    """CAM (Zhou et al. 2016): ``sum_k W[c, k] A_k`` with ``W`` the linear classifier of
    a globally average-pooled target layer. Refused (not a silently wrong map) unless the
    logits are exactly ``W mean(A) + b``: the head must be pooling then that layer."""
    require(ctx, "cam", "model", "targets", "logits")
    model = present(ctx.model, "cam", "model")
    head = pooled_linear_head(unwrapped(model))
    acts = ctx.activations
    weight = head.weight.detach().to(acts.dtype)
    if weight.shape[1] != acts.shape[1]:
        raise ValueError(
            f"cam: the last nn.Linear takes {weight.shape[1]} features but the target layer has "
            f"{acts.shape[1]} channels; CAM needs the layer whose global average pool feeds the classifier."
        )
    expected = acts.mean(dim=(2, 3)) @ weight.T
    if head.bias is not None:
        expected = expected + head.bias.detach().to(acts.dtype)
    # to the logits' own precision (bf16 under autocast), relative to their scale
    call_logits = present(ctx.logits, "cam", "logits")
    tolerance = max(1e-3, 8 * torch.finfo(call_logits.dtype).eps) * float(call_logits.abs().max()) + 1e-6
    logits = call_logits.to(acts.dtype)
    if expected.shape != logits.shape or not torch.allclose(expected, logits, rtol=0, atol=tolerance):
        raise ValueError(
            "cam: the logits are not the last nn.Linear of the target layer's global average pool "
            "(a non-linearity or another layer sits between them); pick that layer or use gradcam, "
            "which equals CAM on such heads."
        )
    return weighted_sum(weight[ctx.targets], acts)

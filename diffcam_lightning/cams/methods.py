"""The CAM methods: small pure functions registered by name.

A method maps a :class:`CAMContext` (activations ``A [B, K, h, w]``, the gradient of its
backprop target ``g``, and for ScoreCAM (``scorecam.py``) the model and input) to a raw map ``[B, h, w]``.
The engine applies ReLU, resizing and normalisation afterwards, identically for all.
Lookup is case-insensitive: ``get_method("MeanDiffGradCAM++")`` works.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn


@dataclass
class CAMContext:
    """Everything a method may read. ``gradients`` maps backprop target -> ``dT/dA``."""

    activations: Tensor
    gradients: dict[str, Tensor] = field(default_factory=dict)
    model: Optional[nn.Module] = None
    inputs: Optional[Tensor] = None
    targets: Optional[Tensor] = None
    scorecam_batch_size: int = 32
    backprop: Optional[str] = None

    @property
    def grad(self) -> Tensor:
        """The gradient of the current method's backprop target."""
        return self.gradients[self.backprop]


MapFunction = Callable[[CAMContext], Tensor]


@dataclass(frozen=True)
class CAMMethod:
    """A registered method. ``backprop`` names its target in ``BACKPROP_TARGETS``
    (``None`` for gradient-free methods)."""

    name: str
    compute: MapFunction
    backprop: Optional[str] = None


_REGISTRY: dict[str, CAMMethod] = {}


def register_method(name: str, backprop: Optional[str] = None) -> Callable[[MapFunction], MapFunction]:
    """Register ``fn(ctx) -> raw map [B, h, w]`` under ``name`` (stored lower case)."""

    def decorator(fn: MapFunction) -> MapFunction:
        key = name.lower()
        if key in _REGISTRY:
            raise ValueError(f"CAM method {name!r} is already registered.")
        _REGISTRY[key] = CAMMethod(key, fn, backprop)
        return fn

    return decorator


def available_methods() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_method(name: str) -> CAMMethod:
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError(f"Unknown CAM method {name!r}. Valid methods: {', '.join(_REGISTRY)}.")
    return _REGISTRY[key]


# ---------------------------------------------------------------- channel weightings


def weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """``sum_k w_k A_k`` for weights ``[B, K]``."""
    return torch.einsum("bk,bkhw->bhw", weights, activations)


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


def _channel_cam(weighting: Callable[[Tensor, Tensor], Tensor]) -> MapFunction:
    def compute(ctx: CAMContext) -> Tensor:
        return weighted_sum(weighting(ctx.activations, ctx.grad), ctx.activations)

    compute.__doc__ = weighting.__doc__
    return compute


def hirescam(ctx: CAMContext) -> Tensor:
    """HiResCAM: element-wise gradient x activation, summed over channels."""
    return (ctx.grad * ctx.activations).sum(dim=1)


def eigencam(ctx: CAMContext) -> Tensor:
    """EigenCAM: projection of the spatially centred activations on their first
    principal component (per sample, no sign correction, as pytorch-grad-cam)."""
    # float64 for a stable SVD where the device has it (MPS does not)
    precise = torch.float32 if ctx.activations.device.type == "mps" else torch.float64
    acts = torch.nan_to_num(ctx.activations.to(precise), nan=0.0)
    b, k, h, w = acts.shape
    flat = acts.reshape(b, k, h * w).transpose(1, 2)  # [B, hw, K]
    flat = flat - flat.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(flat, full_matrices=False)
    projection = flat @ vh[:, 0, :].unsqueeze(-1)  # [B, hw, 1]
    return projection.reshape(b, h, w).float()


def _logits(output) -> Tensor:
    """The logits of a model's output (a tensor, or the first element of a tuple)."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(f"The model must return logits [B, C] (or a tuple starting with them); got {shape}.")
    return output


# ---------------------------------------------------------------- registry

_FAMILIES = {
    "gradcam": _channel_cam(gradcam_weights),
    "gradcam++": _channel_cam(gradcam_plusplus_weights),
}
_DIFF_PREFIX = {"meandiff": "mean", "maxdiff": "max", "lsediff": "lse"}

register_method("gradcam", backprop="logit")(_FAMILIES["gradcam"])
register_method("gradcam++", backprop="logit")(_FAMILIES["gradcam++"])
register_method("hirescam", backprop="logit")(hirescam)
register_method("xgradcam", backprop="logit")(_channel_cam(xgradcam_weights))
register_method("eigencam")(eigencam)
from . import scorecam as _scorecam  # noqa: E402,F401  (its own module; registered here, in METHODS order)
for _family in ("gradcam", "gradcam++"):
    for _prefix, _target in _DIFF_PREFIX.items():
        register_method(f"{_prefix}{_family}", backprop=_target)(_FAMILIES[_family])

METHODS: tuple[str, ...] = available_methods()
GRADIENT_METHODS: tuple[str, ...] = tuple(m for m in METHODS if _REGISTRY[m].backprop is not None)

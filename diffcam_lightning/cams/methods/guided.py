"""Guided backpropagation (Springenberg et al. 2015) and Guided GradCAM (Selvaraju et al.
2017): input gradients through ReLUs that pass only positive gradients where the input was
positive. These are images ``[B, 3, H, W]``, not one-channel maps, so they are functions
here rather than registry entries. The ReLUs are guided by forward hooks that live for the
call only (the model's modules are not replaced); one forward serves every target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn
from typing_extensions import override

from ..classes import explained_classes
from ..modes import eval_mode
from ..outputs import logits_of
from ..targets import BACKPROP_TARGETS


class _GuidedReLU(torch.autograd.Function):
    """Identity on a ReLU's output; its backward keeps a gradient only where both the
    output and the gradient are positive (the ReLU's own backward follows)."""

    @staticmethod
    @override
    def forward(ctx: Any, output: Tensor) -> Tensor:
        ctx.save_for_backward(output)
        return output.clone()

    @staticmethod
    @override
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        output: Tensor
        (output,) = ctx.saved_tensors
        return grad * (output > 0).to(grad.dtype) * (grad > 0).to(grad.dtype)


def _guide(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
    guided: Tensor = _GuidedReLU.apply(output)
    return guided


def guided_backprop(
    model: nn.Module,
    x: Tensor,
    targets: Union[int, Sequence[int], Tensor, None] = None,
    backprop: Union[str, Sequence[str]] = "logit",
) -> Union[Tensor, dict[str, Tensor]]:
    """Guided-backprop input gradients ``[B, C, H, W]`` of the backprop target(s) (names of
    ``BACKPROP_TARGETS``; a dict per name when several) for classes ``targets`` (default:
    the predicted ones). Every ``nn.ReLU`` module is guided, as pytorch-grad-cam does
    (functional ReLUs are not); the model runs in eval mode, its modes restored after."""
    names = [backprop] if isinstance(backprop, str) else list(backprop)
    unknown = [n for n in names if n not in BACKPROP_TARGETS]
    if unknown:
        raise ValueError(f"Unknown backprop target(s) {unknown}; valid: {', '.join(BACKPROP_TARGETS)}.")
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    handles = [m.register_forward_hook(_guide) for m in relus]
    inputs = x.detach().clone().requires_grad_()
    try:
        with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
            logits = logits_of(model(inputs))
            classes = explained_classes(targets, logits)
            result = {}
            for i, name in enumerate(names):
                vector = BACKPROP_TARGETS[name](logits, classes).detach()
                (grad,) = torch.autograd.grad(logits, inputs, vector, retain_graph=i < len(names) - 1)
                result[name] = grad.float()
    finally:
        for handle in handles:
            handle.remove()
    return result[names[0]] if isinstance(backprop, str) else result


def guided_gradcam(
    model: nn.Module,
    x: Tensor,
    targets: Union[int, Sequence[int], Tensor, None] = None,
    target_layer: Optional[Union[str, nn.Module]] = None,
    method: str = "gradcam",
) -> Tensor:
    """Guided GradCAM ``[B, C, H, W]``: the CAM of ``method`` (any registered name, e.g.
    ``meandiffgradcam``; normalised, at input size) times guided backprop of the same target,
    as pytorch-grad-cam's example composes them (before its ``deprocess_image``)."""
    from ..engine import CAMEngine  # the engine imports this package: resolved at call time
    from . import get_method

    chosen = get_method(method)
    if chosen.backprop is None:
        raise ValueError(f"guided_gradcam needs a gradient method; {method!r} backpropagates no target.")
    result = CAMEngine(model, target_layer).compute(x, targets, chosen.name, size="input")
    guided = guided_backprop(model, x, result.targets, chosen.backprop)
    assert isinstance(guided, Tensor)  # one backprop target (a str) gives one tensor
    return result.maps[chosen.name].unsqueeze(1) * guided

"""Backpropagation targets: the scalar each CAM family differentiates.

Every target is linear in the gradient it sends back to the logits, so a target is
fully described by ``d target / d y`` (a ``[B, C]`` tensor). The engine stacks the
vectors of all requested targets and takes ONE batched vector-Jacobian product.

- ``logit``: ``y_c`` (GradCAM family).
- ``mean`` / ``max`` / ``lse``: ``Delta_c = y_c - beta(Y^c)`` (DiffGradCAM family,
  paper eqs. 5-8), with ``beta`` the mean, max or log-mean-exp of the other logits.
- ``rest``: ``2 y_c - logsumexp(y)``, i.e. ``y_c`` minus the cross-entropy (ReST,
  pytorch-grad-cam's ``ClassifierOutputReST``).
- ``softmax``: the probability ``p_c`` (``ClassifierOutputSoftmaxTarget``).
- ``finer``: ``sum_k p_k (y_c - alpha y_k) / sum_k p_k`` over the comparison classes
  ``k``, the classes whose logits are nearest ``y_c`` (ranks 1-3), alpha = 1
  (pytorch-grad-cam's ``FinerCAM`` with its ``FinerWeightedTarget``);
  :func:`finer_weighted_target` builds it for another alpha or other ranks.

``TARGET_VALUES`` holds the scalar itself (``[B]``) for the targets whose gradient is
not written out, and for tests and references.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..registry import Registry

TargetGradient = Callable[[Tensor, Tensor], Tensor]

BACKPROP_TARGETS: Registry[str, TargetGradient] = Registry("backprop target")
"""Backprop target name -> ``d target / d logits`` (read-only; add with :func:`register_target`)."""


def register_target(name: str, *, replace: bool = False) -> Callable[[TargetGradient], TargetGradient]:
    """Register ``fn(logits[B, C], targets[B]) -> d target / d logits [B, C]`` as backprop
    target ``name``; :func:`~diffcam_lightning.cams.compose_target` then registers every
    gradient weighting with it. A taken name is refused unless ``replace=True``.

    Raises:
        ValueError: ``name`` is already registered.

    Example:
        >>> from diffcam_lightning.cams import BACKPROP_TARGETS, register_target
        >>> @register_target("half_logit")
        ... def half_logit(logits, targets):  # T = y_c / 2
        ...     return torch.nn.functional.one_hot(targets, logits.shape[1]).to(logits.dtype) / 2
        >>> BACKPROP_TARGETS["half_logit"](torch.zeros(1, 3), torch.tensor([2]))
        tensor([[0.0000, 0.0000, 0.5000]])
        >>> _ = BACKPROP_TARGETS.unregister("half_logit")  # (a test's clean-up)
    """
    return BACKPROP_TARGETS.decorator(name, replace=replace)


def _onehot(logits: Tensor, targets: Tensor) -> Tensor:
    return torch.nn.functional.one_hot(targets, logits.shape[1]).to(logits.dtype)


def _others_mask(logits: Tensor, targets: Tensor) -> Tensor:
    return ~torch.nn.functional.one_hot(targets, logits.shape[1]).bool()


@register_target("logit")
def logit_gradient(logits: Tensor, targets: Tensor) -> Tensor:
    """``d y_c / d y = onehot(c)``."""
    return _onehot(logits, targets)


@register_target("mean")
def mean_diff_gradient(logits: Tensor, targets: Tensor) -> Tensor:
    """``Delta = y_c - mean_{j!=c} y_j``: ``onehot(c) - (1 - onehot(c)) / (C - 1)``."""
    onehot = _onehot(logits, targets)
    return onehot - (1.0 - onehot) / (logits.shape[1] - 1)


@register_target("max")
def max_diff_gradient(logits: Tensor, targets: Tensor) -> Tensor:
    """``Delta = y_c - max_{j!=c} y_j``: ``onehot(c) - onehot(argmax_{j!=c} y_j)``."""
    others = logits.detach().masked_fill(~_others_mask(logits, targets), -math.inf)
    runner_up = others.argmax(dim=1)
    return _onehot(logits, targets) - _onehot(logits, runner_up)


@register_target("lse")
def lse_diff_gradient(logits: Tensor, targets: Tensor) -> Tensor:
    """``Delta = y_c - log(mean_{j!=c} exp y_j)``: ``onehot(c) - softmax_{j!=c}(y)``.

    The softmax weights depend on the logits; they are kept in the graph so that
    ``create_graph=True`` differentiates the exact map (second-order term included).
    """
    others = logits.float().masked_fill(~_others_mask(logits, targets), -math.inf)
    return _onehot(logits, targets) - torch.softmax(others, dim=1).to(logits.dtype)


@register_target("rest")
def rest_gradient(logits: Tensor, targets: Tensor) -> Tensor:
    """``T = 2 y_c - logsumexp(y)``: ``2 onehot(c) - softmax(y)`` (kept in the graph, as lse)."""
    return 2 * _onehot(logits, targets) - torch.softmax(logits.float(), dim=1).to(logits.dtype)


@register_target("softmax")
def softmax_gradient(logits: Tensor, targets: Tensor) -> Tensor:
    """``T = p_c``: ``p_c (onehot(c) - p)``."""
    p = torch.softmax(logits.float(), dim=1).to(logits.dtype)
    return p.gather(1, targets[:, None]) * (_onehot(logits, targets) - p)


def nearest_classes(logits: Tensor, targets: Tensor, ranks: Sequence[int]) -> Tensor:
    """The classes at ``ranks`` when all are sorted by ``|y_j - y_c|`` (rank 0 is c itself):
    ``[B, len(ranks)]``, as pytorch-grad-cam's FinerCAM picks its comparison classes."""
    if logits.shape[1] < 2:
        raise ValueError(f"the finer target needs at least 2 classes; the model has {logits.shape[1]}.")
    y = logits.detach()
    distance = (y - y.gather(1, targets[:, None])).abs().scatter(1, targets[:, None], -1.0)
    order = torch.argsort(distance, dim=1, stable=True)
    kept = [r for r in ranks if 0 < r < logits.shape[1]]  # clamped like FinerCAM on small heads
    if not kept:
        raise ValueError(f"finer target: no comparison rank among {list(ranks)} fits {logits.shape[1]} classes.")
    return order[:, kept]


def finer_weighted_value(alpha: float = 1.0, ranks: Sequence[int] = (1, 2, 3)) -> Callable[[Tensor, Tensor], Tensor]:
    """``T = sum_k p_k (y_c - alpha y_k) / (sum_k p_k + 1e-9)`` over the nearest classes."""

    def value(logits: Tensor, targets: Tensor) -> Tensor:
        others = nearest_classes(logits, targets, ranks)
        p = torch.softmax(logits, dim=1).gather(1, others)
        y_c = logits.gather(1, targets[:, None])
        return (p * (y_c - alpha * logits.gather(1, others))).sum(1) / (p.sum(1) + 1e-9)

    return value


def gradient_of(value: Callable[[Tensor, Tensor], Tensor]) -> TargetGradient:
    """``d value / d logits`` by autograd on the logits alone (kept in the graph when the
    logits have one, so ``create_graph=True`` stays exact)."""

    def gradient(logits: Tensor, targets: Tensor) -> Tensor:
        keep = logits.requires_grad
        y = logits if keep else logits.detach().requires_grad_()
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(value(y, targets).sum(), y, create_graph=keep)
        return grad

    return gradient


def finer_weighted_target(alpha: float = 1.0, ranks: Sequence[int] = (1, 2, 3)) -> TargetGradient:
    """The FinerWeighted target's gradient for another ``alpha`` or comparison ``ranks``;
    register it with ``register_target(name)`` and its methods with ``compose_target``."""
    if not math.isfinite(alpha):
        raise ValueError(f"finer target: alpha must be finite; got {alpha}.")
    return gradient_of(finer_weighted_value(alpha, tuple(ranks)))


register_target("finer")(finer_weighted_target())


def _masked(logits: Tensor, targets: Tensor, fill: float) -> Tensor:
    return logits.masked_fill(~_others_mask(logits, targets), fill)


BASELINES: dict[str, TargetGradient] = {
    "mean": lambda y, c: _masked(y, c, 0.0).sum(1) / (y.shape[1] - 1),
    "max": lambda y, c: _masked(y, c, -math.inf).max(1).values,
    "lse": lambda y, c: torch.logsumexp(_masked(y, c, -math.inf), 1) - math.log(y.shape[1] - 1),
}


def beta(logits: Tensor, targets: Tensor, kind: str) -> Tensor:
    """The baseline ``beta(Y^c)`` of the paper (eqs. 6-8), for tests and reports."""
    if kind not in BASELINES:
        raise ValueError(f"Unknown baseline {kind!r}; valid: {sorted(BASELINES)}.")
    return BASELINES[kind](logits, targets)


def _picked(logits: Tensor, targets: Tensor) -> Tensor:
    return logits.gather(1, targets[:, None]).squeeze(1)


TARGET_VALUES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "logit": _picked,
    **{kind: (lambda kind: lambda y, c: _picked(y, c) - beta(y, c, kind))(kind) for kind in BASELINES},  # noqa: B023 (bound by the outer lambda)
    "rest": lambda y, c: 2 * _picked(y, c) - torch.logsumexp(y, 1),
    "softmax": lambda y, c: _picked(torch.softmax(y, 1), c),
    "finer": finer_weighted_value(),
}
"""The scalar ``T [B]`` of each registered target (``d T / d y`` is ``BACKPROP_TARGETS``)."""

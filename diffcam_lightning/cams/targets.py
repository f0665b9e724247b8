"""Backpropagation targets: the scalar each CAM family differentiates.

Every target is linear in the gradient it sends back to the logits, so a target is
fully described by ``d target / d y`` (a ``[B, C]`` tensor). The engine stacks the
vectors of all requested targets and takes ONE batched vector-Jacobian product.

- ``logit``: ``y_c`` (GradCAM family).
- ``mean`` / ``max`` / ``lse``: ``Delta_c = y_c - beta(Y^c)`` (DiffGradCAM family,
  paper eqs. 5-8), with ``beta`` the mean, max or log-mean-exp of the other logits.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

TargetGradient = Callable[[Tensor, Tensor], Tensor]

BACKPROP_TARGETS: dict[str, TargetGradient] = {}


def register_target(name: str) -> Callable[[TargetGradient], TargetGradient]:
    """Register ``fn(logits[B, C], targets[B]) -> d target / d logits [B, C]``."""

    def decorator(fn: TargetGradient) -> TargetGradient:
        BACKPROP_TARGETS[name] = fn
        return fn

    return decorator


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

"""What a CAM method reads (``CAMContext``) and the channel sum every weighting ends in.

Its own module so that ``methods.py`` (the registry) and ``scorecam.py`` (a method with its
own machinery) both build on it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

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
    layer: Optional[nn.Module] = None  # the target layer (AblationCAM replaces its output)
    layout: Optional[Any] = None  # the layer's resolved Layout (AblationCAM ablates in the layer's own layout)
    raw_activations: Optional[Tensor] = None  # the layer's output before the layout conversion

    @property
    def grad(self) -> Tensor:
        """The gradient of the current method's backprop target."""
        if self.backprop is None:
            raise KeyError("CAMContext.grad: the current method has no backprop target (it is gradient-free).")
        return self.gradients[self.backprop]


MapFunction = Callable[[CAMContext], Tensor]


def weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """``sum_k w_k A_k`` for weights ``[B, K]``."""
    return torch.einsum("bk,bkhw->bhw", weights, activations)

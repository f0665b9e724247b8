"""Meta-methods over several target layers: RefineCAM (pytorch-grad-cam 1.5.7), the product
of one method's maps at several layers, which keeps only what every layer agrees on (it
denoises early layers). One engine call per layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import Tensor, nn

from ..postprocess import minmax_normalize


def refinecam(
    model: nn.Module,
    x: Tensor,
    layers: Sequence[Union[str, nn.Module]],
    targets: Union[int, Sequence[int], Tensor, None] = None,
    method: str = "gradcam++",
) -> Tensor:
    """RefineCAM ``[B, H, W]``: the min-max normalised product of ``method``'s normalised
    maps (input size) at each of ``layers``; ``method`` is any registered name
    (``meandiffgradcam++`` gives its Diff variant). GradCAM++ by default, as pytorch-grad-cam."""
    from ..engine import CAMEngine  # the engine imports this package: resolved at call time

    if not layers:
        raise ValueError("refinecam needs at least one target layer.")
    product: Optional[Tensor] = None
    for layer in layers:
        result = CAMEngine(model, layer).compute(x, targets, method, size="input")
        targets = result.targets  # the first layer's predicted classes for every layer
        maps = next(iter(result.maps.values()))
        product = maps if product is None else product * maps
    assert product is not None  # layers is not empty
    return minmax_normalize(torch.relu(product))

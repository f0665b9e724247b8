"""The class each image's map explains: a user's ``targets`` checked against the logits.

One place for the engine and for the methods that run the model themselves (guided
backprop, LeGrad): an int for every image, a sequence or a tensor of class indices, or
``None`` for the predicted classes.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Literal, Optional, Union

import torch
from torch import Tensor

TargetSpec = Union[None, int, Sequence[int], Tensor]

# Which class a map explains when a training step or the audit chooses: the true label, or
# the prediction (None: the engine takes the argmax). The same closed choice for the
# classifier's saliency loss and the audit, typed so that LightningCLI lists it in --help.
CamClass = Literal["label", "prediction"]
CAM_CLASSES: Mapping[str, Callable[[Optional[Tensor]], Optional[Tensor]]] = MappingProxyType(
    {"label": lambda labels: labels, "prediction": lambda labels: None}
)


def explained_classes(targets: TargetSpec, logits: Tensor) -> Tensor:
    """The class explained per image ``[B]`` (long, on the logits' device).

    Raises:
        TypeError: targets that are not integer class indices.
        ValueError: a count other than the batch's, or a class outside ``0..C-1``.
    """
    batch, classes = logits.shape
    if targets is None:
        return logits.detach().argmax(dim=1)
    if isinstance(targets, numbers.Integral) or (isinstance(targets, Tensor) and targets.dim() == 0):
        targets = [int(targets)] * batch
    # checked where the targets are: lists and CPU tensors on the host, so that a call on a GPU
    # needs no host-device synchronisation (a CUDA tensor of targets costs one, for this check)
    chosen = torch.as_tensor(targets)
    if chosen.dtype.is_floating_point or chosen.dtype == torch.bool:
        raise TypeError(f"targets must hold integer class indices; got dtype {chosen.dtype}.")
    chosen = chosen.long().reshape(-1)
    if chosen.numel() != batch:
        raise ValueError(f"targets has {chosen.numel()} entries for a batch of {batch}.")
    bad = (chosen < 0) | (chosen >= classes)
    if bad.any():
        value = int(chosen[bad][0])
        raise ValueError(f"Target class {value} is out of range: the model has {classes} classes (0..{classes - 1}).")
    return chosen.to(logits.device, non_blocking=True)

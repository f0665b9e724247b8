"""Target-layer resolution: a dotted name, an ``nn.Module``, or ``None`` = automatic.

Automatic resolution, in order: the families we ship (by model class name), timm's
``feature_info[-1]["module"]``, then the last module whose output is ``[B, K, h, w]``
with ``h * w > 1`` in one hooked forward pass.
"""

from __future__ import annotations

import difflib
from typing import Optional, Union

import torch
from torch import Tensor, nn

# model class name -> candidate layer names, first existing one wins
KNOWN_LAYERS: dict[str, tuple[str, ...]] = {
    "DenseNet": ("features.norm5",),
    "ResNet": ("layer4",),
    "Inception3": ("Mixed_7c",),
    "InceptionV3": ("Mixed_7c",),
    "ConvNeXt": ("stages.3", "features.7"),
}

LayerSpec = Union[str, nn.Module, None]


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: module for name, module in model.named_modules() if name}


def _unknown_layer_error(model: nn.Module, name: str) -> ValueError:
    names = list(_modules(model))
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    known = known_layer_name(model)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    default = f" The automatic choice for this model is {known!r}." if known else ""
    return ValueError(
        f"Target layer {name!r} is not a module of {type(model).__name__}.{hint}{default} "
        f"Valid names are the dotted names of model.named_modules() ({len(names)} in all); "
        f"the last ones: {', '.join(names[-12:])}."
    )


def layer_by_name(model: nn.Module, name: str) -> nn.Module:
    modules = _modules(model)
    if name not in modules:
        raise _unknown_layer_error(model, name)
    return modules[name]


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is layer:
            return name or "<model>"
    raise ValueError(
        f"The target layer {type(layer).__name__} is not a submodule of {type(model).__name__}; "
        "pass a module of this model, its dotted name, or None for automatic selection."
    )


def known_layer_name(model: nn.Module) -> Optional[str]:
    """The CAM layer of a known family or of a timm model, without running it."""
    modules = _modules(model)
    for candidate in KNOWN_LAYERS.get(type(model).__name__, ()):
        if candidate in modules:
            return candidate
    feature_info = getattr(model, "feature_info", None)
    if isinstance(feature_info, list) and feature_info and isinstance(feature_info[-1], dict):
        candidate = feature_info[-1].get("module")
        if candidate in modules:
            return candidate
    return None


def last_spatial_layer_name(model: nn.Module, x: Tensor) -> str:
    """The last module (in execution order) whose output is ``[B, K, h, w]`` with h*w > 1."""
    order: list[str] = []
    handles = []

    def make_hook(name: str):
        def hook(module, inputs, output):
            if isinstance(output, Tensor) and output.dim() == 4 and output.shape[-1] * output.shape[-2] > 1:
                order.append(name)

        return hook

    try:
        for name, module in _modules(model).items():
            handles.append(module.register_forward_hook(make_hook(name)))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(x[:1])
        finally:
            model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    if not order:
        raise ValueError(
            f"No module of {type(model).__name__} outputs a [B, K, h, w] feature map with h*w > 1 "
            f"for an input of shape {tuple(x.shape)}; pass target_layer explicitly."
        )
    return order[-1]


def resolve_layer(model: nn.Module, spec: LayerSpec, x: Optional[Tensor] = None) -> tuple[str, nn.Module]:
    """``(dotted name, module)`` for a layer spec. ``x`` is needed only for the hooked search."""
    if isinstance(spec, nn.Module):
        return layer_name(model, spec), spec
    if isinstance(spec, str):
        return spec, layer_by_name(model, spec)
    if spec is not None:
        raise TypeError(f"target_layer must be a dotted name, an nn.Module or None; got {type(spec).__name__}.")
    name = known_layer_name(model)
    if name is None:
        if x is None:
            raise ValueError("Automatic target-layer search needs an input; call the engine with one.")
        name = last_spatial_layer_name(model, x)
    return name, layer_by_name(model, name)

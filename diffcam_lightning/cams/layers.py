"""Target-layer resolution: a dotted name, an ``nn.Module``, or ``None`` = automatic.

Automatic resolution, in order: the families we know (by model class name: timm's,
torchvision's and Hugging Face's), a timm model's class-token head (``global_pool="token"``:
the last block's first norm), timm's ``feature_info[-1]["module"]``, then the last
module whose output is ``[B, K, h, w]`` with ``h * w > 1`` in one hooked forward pass.
The choice is the last feature map before global pooling (a family's head convolution
included), the same layer for one architecture from timm or torchvision. Pooling layers
are never picked automatically (a ``Sequential`` ending in one gives its last other
child), nor is a module called more than once per forward (its hook fires at every call).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from .modes import eval_mode

# model class name -> candidate layer names, first existing one wins; "-1" = the last child
KNOWN_LAYERS: dict[str, tuple[str, ...]] = {
    "DenseNet": ("features.norm5",),
    "ResNet": ("layer4",),  # timm and torchvision ResNet / ResNeXt / Wide-ResNet
    "Inception3": ("Mixed_7c",),
    "InceptionV3": ("Mixed_7c",),
    "ConvNeXt": ("stages.-1", "features.-1"),
    "VGG": ("features",),  # torchvision; its trailing MaxPool is skipped
    "MobileNetV2": ("features",),
    "MobileNetV3": ("features",),  # timm's conv_head acts on pooled features: feature_info applies
    "EfficientNet": ("bn2", "features"),  # timm: after conv_head (+ bn2); torchvision: features ends with it
    "RegNet": ("trunk_output", "final_conv"),
    "SqueezeNet": ("features",),
    # CLS-token ViTs: the last block's patch tokens get no gradient from the CLS head, so the
    # layer is the last block's first norm (as pytorch-grad-cam's documentation uses)
    "VisionTransformer": ("blocks.-1.norm1",),
    "VisionTransformerDistilled": ("blocks.-1.norm1",),
    "ViTForImageClassification": ("vit.encoder.layer.-1.layernorm_before", "vit.layers.-1.layernorm_before"),
    "DeiTForImageClassification": ("deit.encoder.layer.-1.layernorm_before", "deit.layers.-1.layernorm_before"),
    "DeiTForImageClassificationWithTeacher": (
        "deit.encoder.layer.-1.layernorm_before",
        "deit.layers.-1.layernorm_before",
    ),
    # Hugging Face's other ViT families (class token or mean pooled: the last block's first norm)
    "BeitForImageClassification": ("beit.encoder.layer.-1.layernorm_before", "beit.layers.-1.layernorm_before"),
    "Data2VecVisionForImageClassification": (
        "data2vec_vision.encoder.layer.-1.layernorm_before",
        "data2vec_vision.layers.-1.layernorm_before",
    ),
    "Dinov2ForImageClassification": ("dinov2.encoder.layer.-1.norm1", "dinov2.layers.-1.norm1"),
    "CLIPForImageClassification": ("vision_model.encoder.layers.-1.layer_norm1",),
    "SiglipForImageClassification": ("vision_model.encoder.layers.-1.layer_norm1",),
    "SwinForImageClassification": ("swin.layernorm",),  # mean pooled patch tokens, no prefix
}

# a timm model's ``global_pool`` -> candidate layers. A class-token head ("token") reads only
# the class token after the last block, so the last block's patch tokens get no gradient
# (Eva / BEiT / ViT-RelPos / NaFlexViT with global_pool="token"): take the last block's first
# norm, whose patch tokens reach the class token through that block's attention.
POOLED_LAYERS: dict[str, tuple[str, ...]] = {
    "token": ("blocks.-1.norm1",),
}

POOLING = (
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._MaxPoolNd,
)

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


def _compiled_prefix(model: nn.Module) -> str:
    """``"_orig_mod."`` for a ``torch.compile``d model, whose modules live under it."""
    return "_orig_mod." if isinstance(getattr(model, "_orig_mod", None), nn.Module) else ""


def layer_by_name(model: nn.Module, name: str) -> nn.Module:
    modules = _modules(model)
    if name not in modules and _compiled_prefix(model) + name in modules:
        name = _compiled_prefix(model) + name  # names of the uncompiled model work too
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


def is_pooling(module: nn.Module) -> bool:
    """torch pooling layers and pooling wrappers such as timm's ``SelectAdaptivePool2d``."""
    return isinstance(module, POOLING) or "Pool" in type(module).__name__


def _expand_last(model: nn.Module, candidate: str) -> Optional[str]:
    """``"blocks.-1.norm1"`` -> ``"blocks.11.norm1"``; ``None`` if a part does not exist."""
    module, parts = model, []
    for part in candidate.split("."):
        if part == "-1":
            children = list(module.named_children())
            if not children:
                return None
            part = children[-1][0]
        child = getattr(module, part, None) if not part.isdigit() else dict(module.named_children()).get(part)
        if not isinstance(child, nn.Module):
            return None
        module = child
        parts.append(part)
    return ".".join(parts)


def _skip_trailing_pooling(model: nn.Module, name: str) -> str:
    """A ``Sequential`` that ends in pooling (VGG's ``features``) gives its last other child."""
    module = model.get_submodule(name)
    while isinstance(module, nn.Sequential) and len(module) and is_pooling(module[-1]):
        keep = [n for n, child in module.named_children() if not is_pooling(child)]
        if not keep:
            break
        name, module = f"{name}.{keep[-1]}", module.get_submodule(keep[-1])
    return name


def known_layer_name(model: nn.Module) -> Optional[str]:
    """The CAM layer of a known family or of a timm model, without running it."""
    prefix = _compiled_prefix(model)
    if prefix:
        compiled = model._orig_mod
        inner = known_layer_name(compiled) if isinstance(compiled, nn.Module) else None
        return prefix + inner if inner else None
    modules = _modules(model)
    for candidate in KNOWN_LAYERS.get(type(model).__name__, ()):
        name = _expand_last(model, candidate)
        if name in modules:
            return _skip_trailing_pooling(model, name)
    pool = getattr(model, "global_pool", None)
    for candidate in POOLED_LAYERS.get(pool, ()) if isinstance(pool, str) else ():
        name = _expand_last(model, candidate)
        if name in modules:
            return name
    feature_info = getattr(model, "feature_info", None)
    if isinstance(feature_info, list) and feature_info and isinstance(feature_info[-1], dict):
        last = feature_info[-1].get("module")
        if isinstance(last, str) and last in modules:
            return last
    return None


def trace_layers(model: nn.Module, x: Tensor) -> tuple[list[str], dict[str, int], list[str]]:
    """One hooked eval-mode forward of ``x[:1]``: the modules whose last output is a spatial
    ``[B, K, h, w]`` map (h*w > 1) that is no pooling layer's output, in execution order,
    every module's call count, and the modules with token outputs ``[B, N, C]`` in order."""
    order: dict[str, None] = {}
    tokens: dict[str, None] = {}
    calls: dict[str, int] = {}
    # pooling outputs, held (not their id()s: a freed tensor's address is reused by a later
    # layer's output, which would then be skipped as pooled); a container returning one is pooled too
    pooled: list[Tensor] = []
    handles = []

    def make_hook(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            order.pop(name, None)
            tokens.pop(name, None)
            if isinstance(output, Tensor) and output.dim() == 3 and output.shape[1] > 1:
                tokens[name] = None
            if is_pooling(module) and isinstance(output, Tensor):
                pooled.append(output)
            elif isinstance(output, Tensor) and output.dim() == 4 and output.shape[-1] * output.shape[-2] > 1:
                if not any(output is seen for seen in pooled):
                    order[name] = None

        return hook

    try:
        for name, module in _modules(model).items():
            handles.append(module.register_forward_hook(make_hook(name)))
        with eval_mode(model), torch.no_grad():
            model(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    return list(order), calls, list(tokens)


def last_spatial_layer_name(model: nn.Module, x: Tensor) -> str:
    """The last module (in execution order) called once whose output is a spatial map.
    A model that goes on with tokens after it (a patch embedding, then a transformer) is
    refused: its last spatial map is no CAM layer."""
    order, calls, tokens = trace_layers(model, x)
    once = [name for name in order if calls[name] == 1]
    if not once:
        raise ValueError(
            f"No module of {type(model).__name__} called once per forward outputs a [B, K, h, w] feature map "
            f"with h*w > 1 for an input of shape {tuple(x.shape)}; pass target_layer explicitly."
        )
    later = [name for name in tokens if calls[name] == 1 and not name.startswith(once[-1] + ".")]
    executed = list(calls)
    if later and executed.index(later[-1]) > executed.index(once[-1]):
        raise ValueError(
            f"{type(model).__name__} works on tokens after its last spatial map {once[-1]!r} (e.g. {later[-1]!r} "
            "outputs [B, N, C]): pass target_layer (a token layer, e.g. the last block's first norm) and, if "
            "needed, layout='tokens:P'."
        )
    return once[-1]


def reused_layer_error(model: nn.Module, name: str, count: int, x: Tensor) -> ValueError:
    """The error for a target layer called ``count`` > 1 times in one forward pass."""
    try:
        suggestion = f" A layer called once: {last_spatial_layer_name(model, x)!r}."
    except ValueError:  # no single suggestion
        suggestion = ""
    return ValueError(
        f"Target layer {name!r} was called {count} times in one forward pass (a module shared by several "
        f"places, e.g. one activation module reused): its CAM would mix the calls.{suggestion} "
        "Pass a target_layer that is called once."
    )


# a transformer block's first norm, under the names timm / Hugging Face / OpenCLIP give it
_BLOCK_INPUT_NORMS = ("norm1", "layernorm_before", "ln_1")


def zero_gradient_error(model: nn.Module, name: str) -> ValueError:
    """The error for a target layer whose gradient is exactly zero for every image while
    the logits differ between images: they do not depend on this layer's output (a
    class-token head reads only the class token after the last block), so every gradient
    map would be blank."""
    modules = _modules(model)
    better = [f"{name}.{norm}" for norm in _BLOCK_INPUT_NORMS if f"{name}.{norm}" in modules]
    known = known_layer_name(model)
    if known and known != name and known not in better:
        better.append(known)
    hint = (
        f" Use {better[0]!r} instead (target_layer=...)."
        if better
        else (" Pass a target_layer the logits depend on: for a class-token transformer, the last block's first norm.")
    )
    return ValueError(
        f"The gradient of the logits at target layer {name!r} is exactly zero for every image, so every "
        f"gradient-based map would be blank: the logits do not depend on this layer's output (e.g. a class-token "
        f"head reads only the class token after the last block).{hint} (For a single image, a classifier that "
        "ignores its input, e.g. a zero-initialised head, looks the same: try two images.)"
    )


def resolve_layer(model: nn.Module, spec: LayerSpec, x: Optional[Tensor] = None) -> tuple[str, nn.Module]:
    """``(dotted name, module)`` for a layer spec. ``x`` is needed only for the hooked search."""
    if isinstance(spec, nn.Module):
        return layer_name(model, spec), spec
    if isinstance(spec, str):
        layer = layer_by_name(model, spec)
        return layer_name(model, layer), layer
    if spec is not None:
        raise TypeError(f"target_layer must be a dotted name, an nn.Module or None; got {type(spec).__name__}.")
    name = known_layer_name(model)
    if name is None:
        if x is None:
            raise ValueError("Automatic target-layer search needs an input; call the engine with one.")
        name = last_spatial_layer_name(model, x)
    return name, layer_by_name(model, name)

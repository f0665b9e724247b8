"""Layouts of a CAM layer's output, turned into ``[B, K, h, w]`` in ONE place.

A layer may output ``[B, K, h, w]`` (``"nchw"``), channels-last ``[B, h, w, K]``
(``"nhwc"``: timm Swin, MaxViT) or tokens ``[B, N, K]`` with prefix tokens (``"tokens"``:
ViT's CLS, DeiT's distillation token, registers). The engine converts the activations and
every gradient with the same :class:`Layout` before any method runs, so every method,
DiffGradCAM and the ``create_graph`` training loss see ``[B, K, h, w]``.

Automatic detection uses only what the model states: the channel count timm's
``feature_info`` gives the layer, the classifier's input width, the layer's own width (its
last convolution, norm or linear), ``num_prefix_tokens`` and the patch grid. When these
cannot tell, the error names the ``layout`` option. Explicit layouts: ``"nchw"``,
``"nhwc"``, ``"tokens"``, ``"tokens:P"`` (P prefix tokens) or a callable
``A -> [B, K, h, w]`` (a pytorch-grad-cam ``reshape_transform``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union, cast

from torch import Tensor, nn

LayoutSpec = Union[None, str, Callable[[Tensor], Tensor]]
"""``layout=``: ``None`` (detected), ``"nchw"``, ``"nhwc"``, ``"tokens"``, ``"tokens:P"`` or a
callable (a string, not a ``Literal``: ``"tokens:P"`` takes any prefix count ``P``)."""
LayoutName = Literal["nchw", "nhwc", "tokens", "custom"]
"""A resolved :class:`Layout`'s kind (``"custom"``: a callable)."""
LAYOUTS = ("nchw", "nhwc", "tokens", "tokens:P", "a callable A -> [B, K, h, w]")
MAX_GUESSED_PREFIX = 4  # prefix tokens tried when the model states none


@dataclass(frozen=True)
class Layout:
    """A resolved layout: ``convert(t)`` maps the layer's output (or its gradient) to NCHW."""

    name: LayoutName
    prefix: int = 0
    grid: Optional[tuple[int, int]] = None
    transform: Optional[Callable[[Tensor], Tensor]] = None

    def convert(self, t: Tensor) -> Tensor:
        if self.transform is not None:
            return self.transform(t)
        if self.name == "nhwc":
            return t.permute(0, 3, 1, 2)
        if self.name == "tokens":
            assert self.grid is not None  # token layouts are made with their grid
            h, w = self.grid
            return t[:, self.prefix :, :].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)
        return t

    @property
    def channel_dim(self) -> Optional[int]:
        """The channel dimension of the layer's own output (``None`` for a callable)."""
        if self.transform is not None:
            return None
        return 1 if self.name == "nchw" else -1

    @property
    def spec(self) -> Optional[str]:
        """The explicit ``layout=`` value that gives this layout again (``None`` for a callable)."""
        if self.transform is not None:
            return None
        return f"tokens:{self.prefix}" if self.name == "tokens" else self.name

    def __str__(self) -> str:
        if self.name == "tokens" and self.grid is not None:
            return f"tokens ({self.prefix} prefix, {self.grid[0]}x{self.grid[1]} grid)"
        return self.name


@dataclass(frozen=True)
class LayoutHints:
    """What a model states about a layer, gathered once per engine."""

    widths: tuple[int, ...] = ()  # channel counts the layer may have, strongest first
    own: Optional[LayoutName] = None  # the layout the layer's last module implies (a conv: nchw; a linear: nhwc)
    prefix: Optional[int] = None  # timm num_prefix_tokens
    patch: Optional[tuple[int, int]] = None  # the patch embedding's patch size


def model_hints(model: nn.Module, layer_name: str, layer: nn.Module) -> LayoutHints:
    """Channel widths (timm feature_info for this layer, the classifier's input width, the
    layer's own last width), prefix tokens and patch size, as far as the model states them."""
    widths = []
    for info in getattr(model, "feature_info", None) or []:
        if isinstance(info, dict) and info.get("module") == layer_name and isinstance(info.get("num_chs"), int):
            widths.append(info["num_chs"])
    own_width, own = _own_width(layer)
    for width in (_head_in_width(model), own_width):
        if width is not None:
            widths.append(width)
    prefix = getattr(model, "num_prefix_tokens", None)
    return LayoutHints(
        widths=tuple(widths), own=own, prefix=prefix if isinstance(prefix, int) else None, patch=_patch_size(model)
    )


def resolve_layout(
    spec: LayoutSpec, output: Tensor, hints: LayoutHints, input_hw: tuple[int, int], layer: str
) -> Layout:
    """The :class:`Layout` of ``output`` (the layer's output) for an explicit or automatic ``spec``."""
    shape = tuple(output.shape)
    if callable(spec):
        return Layout("custom", transform=spec)
    if spec is None:
        return _detect(shape, hints, input_hw, layer)
    if not isinstance(spec, str):
        raise TypeError(
            f"layout must be a string, a callable or None; got {type(spec).__name__}. Valid: {', '.join(LAYOUTS)}."
        )
    name, _, prefix = spec.lower().partition(":")
    wanted = {"nchw": 4, "nhwc": 4, "tokens": 3}.get(name)
    if wanted is None or (prefix and (name != "tokens" or not prefix.isdigit())):
        raise ValueError(f"Unknown layout {spec!r}; valid: {', '.join(LAYOUTS)}.")
    if len(shape) != wanted:
        raise ValueError(
            f"layout={spec!r} does not fit target layer {layer!r}, whose output has shape {shape} "
            f"({len(shape)}-D; {name!r} needs {wanted}-D). Valid: {', '.join(LAYOUTS)}."
        )
    if name == "tokens":
        return _tokens(shape, hints, input_hw, layer, int(prefix) if prefix else None)
    return Layout(cast(LayoutName, name))


def _detect(shape: tuple[int, ...], hints: LayoutHints, input_hw: tuple[int, int], layer: str) -> Layout:
    if len(shape) == 3:
        for width in hints.widths:
            if shape[1] == width != shape[2]:
                raise ValueError(
                    f"Target layer {layer!r} outputs {shape}, channels first ([B, K, N]); set layout to a callable "
                    "that returns [B, K, h, w]."
                )
        return _tokens(shape, hints, input_hw, layer, None)
    if len(shape) != 4:
        raise ValueError(
            f"Target layer {layer!r} outputs shape {shape}; a CAM needs [B, K, h, w], [B, h, w, K] or tokens "
            f"[B, N, K]. Pick another target_layer or set layout ({', '.join(LAYOUTS)})."
        )
    for width in hints.widths:
        first, last = shape[1] == width, shape[3] == width
        if first and last and hints.own is not None:
            return Layout(hints.own)  # a convolution's output is NCHW, a linear's channels-last
        if first and last:
            raise ValueError(
                f"Target layer {layer!r} outputs {shape}: {width} channels fit both [B, K, h, w] and [B, h, w, K]; "
                "set layout='nchw' or layout='nhwc'."
            )
        if first or last:
            return Layout("nchw" if first else "nhwc")
    return Layout("nchw")  # nothing stated: PyTorch's convention


def _tokens(
    shape: tuple[int, ...], hints: LayoutHints, input_hw: tuple[int, int], layer: str, prefix: Optional[int]
) -> Layout:
    tokens = shape[1]
    if prefix is None and hints.prefix:
        # the model's prefix count holds where its class token is: CaiT / XCiT add it only
        # after their patch-only blocks, whose tokens then form the grid alone
        stated, bare = _grid(tokens - hints.prefix, input_hw, hints.patch), _grid(tokens, input_hw, hints.patch)
        if stated is None and bare is not None:
            return Layout("tokens", 0, bare)
    if prefix is None:
        prefix = hints.prefix
    if prefix is not None:
        grid = _grid(tokens - prefix, input_hw, hints.patch)
        if grid is None:
            raise ValueError(
                f"Target layer {layer!r} outputs {tokens} tokens; after {prefix} prefix tokens the other "
                f"{tokens - prefix} do not form a grid with the input's {input_hw[0]}x{input_hw[1]} aspect. "
                "Set layout='tokens:P' with the right prefix count P, or a callable."
            )
        return Layout("tokens", prefix, grid)
    candidates = [
        (p, g)
        for p in range(min(MAX_GUESSED_PREFIX, tokens - 1) + 1)
        if (g := _grid(tokens - p, input_hw, hints.patch)) is not None and min(g) >= 2
    ]
    if len(candidates) != 1:
        found = ", ".join(f"{p} prefix + {g[0]}x{g[1]}" for p, g in candidates) or "none"
        raise ValueError(
            f"Target layer {layer!r} outputs {tokens} tokens and the model states no prefix-token count; "
            f"grids that fit: {found}. Set layout='tokens:P' (P prefix tokens) or a callable."
        )
    return Layout("tokens", *candidates[0])


def _grid(count: int, input_hw: tuple[int, int], patch: Optional[tuple[int, int]]) -> Optional[tuple[int, int]]:
    """``(h, w)`` with ``h * w == count``: the patch grid if it fits, else the input's aspect."""
    if count < 1:
        return None
    height, width = input_hw
    if patch is not None and (height // patch[0]) * (width // patch[1]) == count:
        return height // patch[0], width // patch[1]
    h = round(math.sqrt(count * height / width))
    if h >= 1 and count % h == 0 and h * width == (count // h) * height:
        return h, count // h
    return None


def _head_in_width(model: nn.Module) -> Optional[int]:
    """The classifier's input width: timm's ``num_features`` or the last Linear's ``in_features``."""
    stated = getattr(model, "num_features", None)
    if isinstance(stated, int) and stated > 0:
        return stated
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].in_features if linears else None


# module type -> (its output width, the layout it implies)
_WIDTH: dict[type[nn.Module], Callable[[Any], tuple[int, LayoutName]]] = {
    nn.Conv2d: lambda m: (m.out_channels, "nchw"),
    nn.BatchNorm2d: lambda m: (m.num_features, "nchw"),
    nn.GroupNorm: lambda m: (m.num_channels, "nchw"),
    nn.LayerNorm: lambda m: (m.normalized_shape[-1], "nhwc"),
    nn.Linear: lambda m: (m.out_features, "nhwc"),
}


def _own_width(layer: nn.Module) -> tuple[Optional[int], Optional[LayoutName]]:
    """The width of the layer's last (registered) convolution, norm or linear, and the
    layout that module implies (``None, None`` when it has none)."""
    found: tuple[Optional[int], Optional[LayoutName]] = (None, None)
    for module in layer.modules():
        for kind, read in _WIDTH.items():
            if isinstance(module, kind):
                width, layout = read(module)
                channels_first = type(module).__name__.endswith("2d")  # timm's LayerNorm2d, BatchNormAct2d
                found = (width, "nchw" if channels_first else layout)
    return found


def _patch_size(model: nn.Module) -> Optional[tuple[int, int]]:
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is None:
        patch = getattr(getattr(model, "config", None), "patch_size", None)
    if isinstance(patch, int):
        return patch, patch
    if isinstance(patch, (tuple, list)) and len(patch) == 2:
        return int(patch[0]), int(patch[1])
    return None

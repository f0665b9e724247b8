"""The logits in whatever a model returns, and the classifier width a model states.

Accepted outputs: a ``[B, C]`` tensor, a tuple/list whose first element is the logits, a
dict with ``"logits"``, or an object with a ``.logits`` attribute (Hugging Face
``ImageClassifierOutput``). Where the classifier's width is known (timm's
``num_classes``, a Hugging Face ``config.num_labels``, the last ``nn.Linear``), the first
element of a tuple/list of another width is refused: a ``(pooled_features [B, 512],
logits)`` tuple must never be read as 512 classes. (A plain tensor, a ``"logits"`` entry
and ``.logits`` are the logits by definition.) ``output_key`` picks the logits
explicitly: an index into a tuple/list, or a key/attribute name.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from torch import Tensor, nn
from typing_extensions import override

OutputKey = Union[None, int, str]


def classifier_width(model: nn.Module) -> Optional[int]:
    """The number of classes the model states: timm ``num_classes``, Hugging Face
    ``config.num_labels``, else the last ``nn.Linear``'s ``out_features`` (``None`` if none)."""
    stated = getattr(model, "num_classes", None)
    if isinstance(stated, int) and stated > 0:
        return stated
    config = getattr(model, "config", None)
    labels = getattr(config, "num_labels", None)
    if isinstance(labels, int) and labels > 0 and hasattr(model, "classifier"):
        return labels
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _describe(output: Any) -> str:
    if isinstance(output, Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    if isinstance(output, (tuple, list)):
        inner = ", ".join(_describe(o) if isinstance(o, Tensor) else type(o).__name__ for o in output[:4])
        return f"a {type(output).__name__} of {len(output)} ({inner})"
    if isinstance(output, dict):
        return f"a dict with keys {list(output)}"
    return f"a {type(output).__name__}"


def _pick(output: Any, key: OutputKey) -> Any:
    if key is None:
        if isinstance(output, Tensor):
            return output
        if isinstance(output, (tuple, list)) and output:
            return output[0]
        if isinstance(output, dict) and "logits" in output:
            return output["logits"]
        if hasattr(output, "logits"):
            return output.logits
        return output
    if isinstance(key, int):
        if isinstance(output, (tuple, list)) and -len(output) <= key < len(output):
            return output[key]
    elif isinstance(output, dict) and key in output:
        return output[key]
    elif hasattr(output, key):
        return getattr(output, key)
    raise ValueError(f"output_key={key!r} does not select anything in the model's output ({_describe(output)}).")


def logits_of(output: Any, width: Optional[int] = None, key: OutputKey = None) -> Tensor:
    """The ``[B, C]`` logits in ``output``; ``width`` = the classifier's known class count."""
    logits = _pick(output, key)
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ValueError(
            f"Cannot find logits [B, C] in the model's output ({_describe(output)}). A model must return a tensor, "
            "a tuple/list starting with the logits, a dict with 'logits' or an object with .logits; "
            "otherwise set output_key (an index or a key) to pick them."
        )
    if key is None and isinstance(output, (tuple, list)) and width is not None and logits.shape[1] != width:
        fits = [i for i, o in enumerate(output) if isinstance(o, Tensor) and o.dim() == 2 and o.shape[1] == width]
        hint = f" Element {fits[0]} has {width} columns: set output_key={fits[0]}." if fits else ""
        raise ValueError(
            f"The model's output ({_describe(output)}) starts with {logits.shape[1]} values per image, but its "
            f"classifier has {width} classes: the first element is not the logits.{hint} "
            "Set output_key (an index or a key) to pick the logits."
        )
    return logits


class LogitsView(nn.Module):
    """``model`` with its output reduced to the logits (what the engine hands the methods
    that run the model again when ``output_key`` is set); ``model`` is the network itself."""

    def __init__(self, model: nn.Module, key: OutputKey) -> None:
        super().__init__()
        self.model, self.key = model, key

    @override
    def forward(self, x: Tensor) -> Tensor:
        return logits_of(self.model(x), key=self.key)


def unwrapped(model: nn.Module) -> nn.Module:
    """The network behind a :class:`LogitsView` (methods that read its layers), else ``model``."""
    return model.model if isinstance(model, LogitsView) else model

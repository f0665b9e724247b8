"""Class names and the classes to explain.

Names: a checkpoint's training class names; for a 1000-class model without names, the
ImageNet-1k names that ship with torchvision (offline); otherwise the index as text.
Which class: ``predicted`` (top-1, or the top ``k``), ``label`` (the manifest's label),
or one fixed class by index or name for every image.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Optional, get_args

import torch
from torch import Tensor

IMAGENET_CLASSES = 1000


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k names in index order (torchvision's weights metadata, offline)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def class_names_for(num_classes: int, known: Optional[Sequence[str]] = None) -> list[str]:
    """``known`` when given (it must have ``num_classes`` names); ImageNet names for a
    1000-class model; the indices as text otherwise."""
    if known is not None:
        if len(known) != num_classes:
            raise ValueError(f"{len(known)} class names for a model with {num_classes} classes.")
        return [str(n) for n in known]
    if num_classes == IMAGENET_CLASSES:
        return imagenet_class_names()
    return [str(i) for i in range(num_classes)]


def class_index(value: str, names: Sequence[str], where: str = "--target") -> int:
    """An index (``"285"``) or a class name (case-insensitive, unique) -> index."""
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(names):
            raise ValueError(
                f"{where}: class {index} is out of range (the model has {len(names)} classes, 0..{len(names) - 1})."
            )
        return index
    matches = [i for i, name in enumerate(names) if name.lower() == text.lower()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"{where}: the class name {text!r} is ambiguous (indices {matches}); give the index.")
    close = difflib.get_close_matches(text, list(names), n=5, cutoff=0.6)
    hint = f" Close names: {', '.join(close)}." if close else ""
    raise ValueError(f"{where}: unknown class {text!r}.{hint} Give a class index 0..{len(names) - 1} or a name.")


TargetMode = Literal["predicted", "label", "fixed"]


@dataclass(frozen=True)
class TargetChoice:
    """The classes ``diffcam explain`` explains, as :meth:`parse` reads ``--target`` and ``--top_k``.

    Args:
        mode: ``predicted`` (the top ``k``), ``label`` (the manifest's) or ``fixed``
            (class ``index`` for every image).
        k: How many predicted classes (``predicted`` only).
        index: The class of ``fixed``.

    Raises:
        ValueError: An unknown ``mode``, or ``fixed`` without an ``index``.

    Example:
        >>> choice = TargetChoice.parse("predicted", 2, ["cat", "dog", "fox"])
        >>> choice
        TargetChoice(mode='predicted', k=2, index=None)
        >>> [t.tolist() for t in choice.more(torch.tensor([[0.1, 2.0, 1.0]]))]
        [[2]]
        >>> TargetChoice.parse("Fox", 1, ["cat", "dog", "fox"]).index
        2
    """

    mode: TargetMode
    k: int = 1
    index: Optional[int] = None

    def __post_init__(self) -> None:
        if self.mode not in get_args(TargetMode):
            raise ValueError(f"mode must be one of {', '.join(get_args(TargetMode))}; got {self.mode!r}.")
        if self.mode == "fixed" and self.index is None:
            raise ValueError("mode 'fixed' needs the class index.")

    @classmethod
    def parse(cls, target: str, top_k: int, names: Sequence[str]) -> TargetChoice:
        """``--target`` (predicted, label, or a class index or name) and ``--top_k``."""
        if top_k < 1:
            raise ValueError(f"--top_k must be >= 1; got {top_k}.")
        if top_k > 1 and target != "predicted":
            raise ValueError(f"--top_k {top_k} explains the top predicted classes; it needs --target predicted.")
        if top_k > len(names):
            raise ValueError(f"--top_k {top_k} exceeds the model's {len(names)} classes.")
        if target == "predicted":
            return cls("predicted", top_k)
        if target == "label":
            return cls("label", top_k)
        return cls("fixed", 1, class_index(target, names))

    def first(self, labels: Tensor) -> Optional[Tensor]:
        """The classes of the first engine pass: ``None`` (= predicted), labels or the fixed class."""
        if self.mode == "predicted":
            return None
        if self.mode == "label":
            return labels
        assert self.index is not None  # parse gives the fixed mode its class
        return torch.full_like(labels, int(self.index))

    def more(self, logits: Tensor) -> list[Tensor]:
        """The classes of ranks 2..k (top-k only), one ``LongTensor[B]`` per rank."""
        if self.mode != "predicted" or self.k == 1:
            return []
        top = logits.topk(self.k, dim=1).indices
        return [top[:, r] for r in range(1, self.k)]

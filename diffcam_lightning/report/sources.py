"""Where a report's models come from: every kind of the one resolver of model sources
(:func:`diffcam_lightning.models.sources.load_model`: timm, torchvision, a class path,
a ``SaliencyClassifier`` checkpoint) with ``pretrained`` or a local weights file.

A checkpoint states the CAM layer it was trained at, its SHAM and its layout; the report
uses them unless the model source overrides them, so a fine-tune at ``layer3`` is scored
at ``layer3``. A pretrained model keeps its own classifier: a class count that differs
from the data's is an error, never a silently re-initialised head."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from torch import nn

from ..models.checkpoints import check_class_names, read_checkpoint
from ..models.sources import LoadedModel, checkpoint_hparams, model_from_checkpoint, source_kind
from ..models.sources import load_model as resolve_source
from ..saliency import PAPER_ENTROPY


@dataclass
class ModelSource:
    """One report model, from any model source.

    Args:
        arch: Any model source: a timm name, ``torchvision:NAME``, a class path
            ``package.module.Name``, or a checkpoint path (read from ``checkpoint`` when
            not given).
        pretrained: The source's pretrained weights.
        weights: A local weights file.
        checkpoint: A ``SaliencyClassifier`` checkpoint.
        model_kwargs: Keyword arguments of the model's constructor or factory.
        target_layer: The CAM layer (``None``: the checkpoint's, else automatic).
        layout: The CAM layer's output layout (``None``: the checkpoint's, else automatic).
        sham_entropy: The SHAM's entropy (``None``: the checkpoint's, else the paper's).
        sham_pattern: The SHAM's pattern (``None``: the checkpoint's, else ``border``).

    Raises:
        ValueError: Neither ``arch`` nor a checkpoint that stores one.

    Example:
        >>> ModelSource("timm:resnet18", pretrained=True).arch_name
        'timm:resnet18'
    """

    arch: Optional[str] = None
    pretrained: bool = False
    weights: Optional[str] = None
    checkpoint: Optional[str] = None
    model_kwargs: Optional[dict[str, Any]] = None
    target_layer: Optional[str] = None
    layout: Optional[str] = None
    sham_entropy: Optional[float] = None
    sham_pattern: Optional[str] = None

    def __post_init__(self) -> None:
        if self.checkpoint and not self.arch:
            hparams = checkpoint_hparams(read_checkpoint(Path(self.checkpoint)))
            self.arch = hparams.get("model_name")
        if not self.arch:
            raise ValueError(
                "A model source needs 'arch' (a timm or torchvision name, a class path or a checkpoint)"
                f"{'; checkpoint ' + self.checkpoint + ' does not store one' if self.checkpoint else ''}."
            )

    @property
    def arch_name(self) -> str:
        """``arch``, which ``__post_init__`` guarantees (read from the checkpoint if not given)."""
        assert self.arch is not None
        return self.arch


@dataclass
class ResolvedModel:
    """A report model in eval mode, with the CAM layer, layout and SHAM to use.

    Args:
        model: The network, in eval mode.
        target_layer: The CAM layer (``None``: automatic).
        layout: The CAM layer's output layout (``None``: automatic).
        sham_entropy: The entropy of the SHAM it was tuned with.
        sham_pattern: The pattern of that SHAM.
    """

    model: nn.Module
    target_layer: Optional[str]
    layout: Optional[str]
    sham_entropy: float
    sham_pattern: str


def timm_name(arch: str) -> Optional[str]:
    """The timm name of a timm source (for its data config), else ``None``."""
    try:
        kind, name = source_kind(arch)
    except (ValueError, FileNotFoundError):
        return None
    return name if kind == "timm" else None


def resolve(source: ModelSource, num_classes: int, class_names: Optional[Sequence[str]] = None) -> ResolvedModel:
    """Build ``source`` for data with ``num_classes`` classes, in eval mode. A checkpoint
    that states its class names must list the data's ``class_names`` in the same order."""
    if source.weights and source.checkpoint:
        raise ValueError(f"{source.arch}: give either weights or checkpoint, not both.")
    arch = source.arch_name
    path = Path(source.checkpoint) if source.checkpoint else None
    checkpoint = read_checkpoint(path) if path is not None else None  # read once
    if checkpoint is not None and not _states_network(checkpoint):  # a bare state dict: weights of arch
        loaded = resolve_source(arch, num_classes, weights=source.checkpoint, model_kwargs=source.model_kwargs)
    elif checkpoint is not None and path is not None:
        loaded = model_from_checkpoint(checkpoint, path, None, source.model_kwargs, source.checkpoint)
        stored = loaded.hparams.get("model_name")
        if isinstance(stored, str) and _base(stored) != _base(arch):
            raise ValueError(f"Checkpoint {source.checkpoint} holds a {stored} model, not {source.arch}.")
        _check_classes(loaded, num_classes, f"Checkpoint {source.checkpoint}")
        check_class_names(loaded.class_names, class_names, f"Checkpoint {source.checkpoint}")
    elif source.weights or source.pretrained:
        if source.weights and not Path(source.weights).expanduser().is_file():
            raise FileNotFoundError(f"Weights file not found: {source.weights}")
        loaded = resolve_source(
            arch, None, pretrained=source.pretrained, weights=source.weights, model_kwargs=source.model_kwargs
        )
        where = f"weights file {source.weights}" if source.weights else f"pretrained {source.arch}"
        _check_classes(loaded, num_classes, f"The {where}")
    else:
        loaded = resolve_source(arch, num_classes, model_kwargs=source.model_kwargs)
    hparams = loaded.hparams
    return ResolvedModel(
        model=loaded.model.eval(),
        target_layer=source.target_layer or loaded.target_layer,
        layout=source.layout or loaded.layout,
        sham_entropy=float(_first(source.sham_entropy, hparams.get("sham_entropy"), PAPER_ENTROPY)),
        sham_pattern=str(_first(source.sham_pattern, hparams.get("sham_pattern"), "border")),
    )


def load_report_model(source: ModelSource, num_classes: int) -> nn.Module:
    """The network of ``source`` for ``num_classes`` classes, in eval mode."""
    return resolve(source, num_classes).model


# the former name; ``models.sources.load_model`` (a source string -> LoadedModel) is another function
load_model = load_report_model


def _check_classes(loaded: LoadedModel, num_classes: int, where: str) -> None:
    """A report needs the model's own classifier: refuse a class count that differs."""
    if loaded.num_classes and loaded.num_classes != num_classes:
        raise ValueError(
            f"{where} has {loaded.num_classes} classes but the data has {num_classes}; "
            "a report needs the model's own classifier (use data with the model's classes; "
            "does the checkpoint's class count match the data's?)."
        )


def _states_network(checkpoint: dict[str, Any]) -> bool:
    return isinstance(checkpoint_hparams(checkpoint).get("model_name"), str)


def _base(arch: str) -> str:
    return arch.split(":")[-1].split(".")[0]


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)

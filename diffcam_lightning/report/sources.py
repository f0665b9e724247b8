"""Where a report's models come from: timm (random or ``pretrained``), a local weights
file, or a ``SaliencyClassifier`` checkpoint. Checkpoints are read with
``torch.load(weights_only=True)``; a wrong file is an error naming it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from torch import nn

from ..models.backbones import build_backbone, network_state_from_checkpoint, read_checkpoint

@dataclass
class ModelSource:
    """One model. ``arch`` is a timm name; at most one of ``weights`` / ``checkpoint``.

    - neither, ``pretrained=False``: random init (tests, synthetic runs);
    - ``pretrained=True``: timm's hub weights;
    - ``weights``: a local timm weights file (``.pth``/``.safetensors``), loaded through
      ``pretrained_cfg_overlay=dict(file=...)`` (the classifier is re-initialised when the
      class count differs);
    - ``checkpoint``: a Lightning checkpoint of a ``SaliencyClassifier`` (or any module
      holding the timm network's state dict).
    """

    arch: Optional[str] = None
    pretrained: bool = False
    weights: Optional[str] = None
    checkpoint: Optional[str] = None
    model_kwargs: Optional[dict] = None

    def __post_init__(self) -> None:
        if self.checkpoint and not self.arch:
            hparams = checkpoint_hparams(Path(self.checkpoint))
            self.arch = hparams.get("model_name")
            if self.model_kwargs is None and isinstance(hparams.get("model_kwargs"), dict):
                self.model_kwargs = hparams["model_kwargs"]
        if not self.arch:
            raise ValueError(
                f"A model source needs 'arch' (a timm name){'; checkpoint ' + self.checkpoint + ' does not store one' if self.checkpoint else ''}."
            )


def _check_head(source: "ModelSource", num_classes: int) -> None:
    """A report on a pretrained model must not silently re-initialise its classifier."""
    import timm

    from ..models.backbones import _head_classes

    if source.weights:
        classes, where = _head_classes(source.arch, Path(source.weights)), f"weights file {source.weights}"
    else:
        cfg = timm.get_pretrained_cfg(source.arch)
        classes, where = (cfg.num_classes if cfg is not None else None), f"pretrained {source.arch}"
    if classes is not None and classes != num_classes:
        raise ValueError(
            f"The {where} has {classes} classes but the data has {num_classes}; "
            "a report needs the model's own classifier (use data with the model's classes)."
        )


def checkpoint_hparams(path: Path) -> dict:
    """The hyper-parameters stored in a Lightning checkpoint (``{}`` if none)."""
    return _hparams(read_checkpoint(path))


def _hparams(checkpoint: dict) -> dict:
    hparams = checkpoint.get("hyper_parameters", {})
    return dict(hparams) if isinstance(hparams, dict) else {}


def load_model(source: ModelSource, num_classes: int) -> nn.Module:
    """Build ``source`` for ``num_classes`` classes, in eval mode, on the CPU."""
    if source.weights and source.checkpoint:
        raise ValueError(f"{source.arch}: give either weights or checkpoint, not both.")
    if source.checkpoint:
        path = Path(source.checkpoint)
        checkpoint = read_checkpoint(path)  # read once: hyper-parameters and weights
        stored_arch = _hparams(checkpoint).get("model_name")
        if isinstance(stored_arch, str) and stored_arch.split(".")[0] != source.arch.split(".")[0]:
            raise ValueError(f"Checkpoint {path} holds a {stored_arch} model, not {source.arch}.")
        model = build_backbone(source.arch, num_classes, model_kwargs=source.model_kwargs)
        model.load_state_dict(network_state_from_checkpoint(model, checkpoint, path, source.arch))
        return model.eval()
    if source.weights and not Path(source.weights).is_file():
        raise FileNotFoundError(f"Weights file not found: {source.weights}")
    if source.weights or source.pretrained:
        _check_head(source, num_classes)
    return build_backbone(source.arch, num_classes, source.pretrained, source.weights, source.model_kwargs).eval()

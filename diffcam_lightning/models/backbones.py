"""Backbones from timm: random init, timm's hub (``pretrained=True``) or a local file.

A local weights file goes through timm's own loader
(``pretrained_cfg_overlay=dict(file=...)``, ``torch.load(weights_only=True)``), which
drops the classifier when ``num_classes`` differs from the file's head (and keeps it when
they agree, e.g. a file saved from one of our own runs).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Optional

import timm
from torch import nn

from .checkpoints import network_state_from_checkpoint, read_checkpoint


def build_backbone(
    model_name: str,
    num_classes: Optional[int],
    pretrained: bool = False,
    weights_file: Optional[str] = None,
    model_kwargs: Optional[dict[str, Any]] = None,
) -> nn.Module:
    """``timm.create_model`` with clear errors for unknown names and missing files."""
    base = model_name.split(".")[0]
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown timm model {model_name!r}.{hint} See timm.list_models().")
    if num_classes is not None and num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (DiffGradCAM needs other classes); got {num_classes}.")
    kwargs = dict(model_kwargs or {})
    if num_classes is not None:  # None keeps the model's (or the weights file's) own head
        kwargs["num_classes"] = num_classes
    if weights_file:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights_file {str(path)!r} does not exist (model {model_name!r}).")
        if path.suffix == ".ckpt":  # a Lightning checkpoint, e.g. of a clean run to fine-tune
            model = timm.create_model(model_name, **kwargs)
            model.load_state_dict(network_state_from_checkpoint(model, read_checkpoint(path), path, model_name))
            return model
        overlay: dict[str, Any] = {"file": str(path)}
        file_classes = _head_classes(model_name, path)
        if file_classes is not None:  # timm keeps the file's head only when the counts agree
            overlay["num_classes"] = file_classes
            kwargs.setdefault("num_classes", file_classes)
        return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    return timm.create_model(model_name, pretrained=pretrained, **kwargs)


def _head_classes(model_name: str, path: Path) -> Optional[int]:
    """Rows of the classifier weight stored in a weights file (``None`` if not found), so a
    file saved from a model with the same ``num_classes`` keeps its trained head."""
    from timm.models import load_state_dict

    cfg = timm.get_pretrained_cfg(model_name)
    classifier = cfg.classifier if cfg is not None else None
    if not classifier:
        return None
    names = [classifier] if isinstance(classifier, str) else list(classifier)
    state = load_state_dict(str(path), weights_only=True)
    rows = [state[f"{n}.weight"].shape[0] for n in names if f"{n}.weight" in state]
    return rows[0] if rows else None

"""Backbones from timm: random init, timm's hub (``pretrained=True``) or a local file.

A local weights file goes through timm's own loader
(``pretrained_cfg_overlay=dict(file=...)``, ``torch.load(weights_only=True)``), which
drops the classifier when ``num_classes`` differs from the file's.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Optional

import timm
from torch import nn


def build_backbone(
    model_name: str,
    num_classes: int,
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
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (DiffGradCAM needs other classes); got {num_classes}.")
    kwargs = dict(model_kwargs or {})
    if weights_file:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights_file {str(path)!r} does not exist (model {model_name!r}).")
        return timm.create_model(
            model_name,
            pretrained=True,
            num_classes=num_classes,
            pretrained_cfg_overlay=dict(file=str(path)),
            **kwargs,
        )
    return timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes, **kwargs)

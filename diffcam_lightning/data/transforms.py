"""Paired image + saliency transforms from a timm data config.

timm's training transforms (random resized crop, flips) would move the image but not its
saliency map, so we apply the same *geometry* to both ourselves: resize the shorter side
to ``size / crop_pct``, centre-crop ``size``, optional joint horizontal flip; then the
image gets timm's mean/std. The config comes from ``timm`` for a model name (no weights,
no download) and each key can be overridden.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Optional

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

_INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
    "lanczos": InterpolationMode.LANCZOS,
}


def timm_data_config(model_name: Optional[str] = None, overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """timm's data config (input_size, mean, std, crop_pct, interpolation) for a model
    name, read from its pretrained config (no model built, nothing downloaded)."""
    import timm
    from timm.data.config import resolve_data_config

    cfg = None
    if model_name:
        if not timm.is_model(model_name.split(".")[0]):
            raise ValueError(f"Unknown timm model {model_name!r} (see timm.list_models()).")
        pretrained = timm.get_pretrained_cfg(model_name)
        cfg = pretrained.to_dict() if pretrained is not None else None  # type: ignore[no-untyped-call]  # timm leaves it unannotated
    config = dict(resolve_data_config(pretrained_cfg=cfg or {"input_size": (3, 224, 224)}))  # type: ignore[no-untyped-call]  # timm defaults; timm leaves it unannotated
    for key, value in (overrides or {}).items():
        if key == "image_size":
            key, value = "input_size", (3, int(value), int(value))
        if key not in config:
            raise ValueError(f"Unknown data config key {key!r}; valid: image_size, {', '.join(config)}.")
        config[key] = tuple(value) if isinstance(value, list) else value
    return config


@dataclass
class PairedTransform:
    """Image (PIL) + optional saliency (PIL greyscale) -> normalised tensor, map in [0, 1]."""

    config: dict[str, Any]
    hflip: bool = False

    def __call__(self, image: Image.Image, saliency: Optional[Image.Image]) -> tuple[Tensor, Optional[Tensor]]:
        _, h, w = self.config["input_size"]
        crop_pct = float(self.config.get("crop_pct") or 1.0)
        scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
        interp = _INTERPOLATION.get(str(self.config.get("interpolation", "bilinear")), InterpolationMode.BILINEAR)
        flip = self.hflip and random.random() < 0.5
        scale_arg = scale[0] if h == w else list(scale)
        img = TF.center_crop(TF.resize(image.convert("RGB"), scale_arg, interpolation=interp), [h, w])
        tensor = TF.to_tensor(img)
        tensor = TF.normalize(tensor, list(self.config["mean"]), list(self.config["std"]))
        sal = None
        if saliency is not None:
            sal_t = TF.to_tensor(saliency.convert("L"))  # [1, h0, w0] in [0, 1]
            sal_t = TF.resize(sal_t, scale_arg, interpolation=InterpolationMode.BILINEAR, antialias=True)
            sal = TF.center_crop(sal_t, [h, w])[0]
        if flip:
            tensor = torch.flip(tensor, dims=[-1])
            sal = torch.flip(sal, dims=[-1]) if sal is not None else None
        return tensor, sal

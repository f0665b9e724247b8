"""Attack-agnostic signals of passive fooling, computed on the whole audit set.

A passively fooled CAM stops following the image: whatever mask the attacker chose, the
map becomes nearly the same for every image. These signals measure that without knowing
the mask or the attacked method:

- ``spread``: mean squared deviation of each (min-max) map from the mean map over images;
- ``dependence``: the share of the maps' pixel variance that varies between images,
  ``spread / total variance`` in ``[0, 1]`` (0 = one map for all images, whatever its shape);
- ``disagreement`` (a per-image score family): MSE of each gradient CAM to a gradient-free
  one (EigenCAM), which no saliency loss trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ..cams.postprocess import minmax_normalize
from ..saliency import cam_mse
from .metrics import ScoreContext, Scores, register_score

GRADIENT_FREE = "eigencam"


def spread(maps: Tensor) -> Tensor:
    """Mean over images and pixels of ``(m_i - mean_j m_j)^2`` for min-max maps ``[N, h, w]``."""
    m = minmax_normalize(maps.detach().float())
    return (m - m.mean(dim=0, keepdim=True)).pow(2).mean()


def dependence(maps: Tensor) -> Tensor:
    """``spread / total variance`` of min-max maps ``[N, h, w]``: 1 when the mean map is flat
    and all structure is per image, 0 when every image has the same map (or all are constant)."""
    m = minmax_normalize(maps.detach().float())
    total = (m - m.mean()).pow(2).mean()
    if float(total) <= 0.0:
        return torch.zeros((), device=m.device)
    return spread(m) / total  # m is already min-max: spread's normalisation leaves it as it is


SET_SIGNALS = {"spread": spread, "dependence": dependence}


def set_signals(maps: dict[str, Tensor], methods: Sequence[str]) -> dict[str, float]:
    """``{"<signal>/<method>": value}`` for every set-level signal and method in ``maps``.
    Images with a non-finite map are left out (the audit counts them under ``nan/``); a
    method with fewer than two finite maps gets no set-level value, so a NaN can neither
    fire nor silence a rule."""
    out = {}
    for m in methods:
        if m not in maps:
            continue
        finite = maps[m][torch.isfinite(maps[m]).flatten(1).all(dim=1)]
        if len(finite) >= 2:
            out.update({f"{name}/{m}": float(fn(finite)) for name, fn in SET_SIGNALS.items()})
    return out


class AuditMaps(Metric):
    """The audit set's maps of each method, gathered from every DDP rank (``cat``), for the
    set-level signals (a spread over images needs all images at once)."""

    full_state_update = False

    def __init__(self, methods: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.methods = list(methods)
        for i in range(len(self.methods)):
            self.add_state(f"maps_{i}", default=[], dist_reduce_fx="cat")

    def update(self, maps: dict[str, Tensor]) -> None:
        for i, m in enumerate(self.methods):
            if m in maps:
                getattr(self, f"maps_{i}").append(maps[m].detach().float())

    def compute(self) -> dict[str, Tensor]:
        out = {}
        for i, m in enumerate(self.methods):
            parts = getattr(self, f"maps_{i}")
            if isinstance(parts, Tensor) or parts:
                out[m] = dim_zero_cat(parts)
        return out


def _disagreement_keys(methods: Sequence[str], pairs: Sequence[tuple[str, str]]) -> list[str]:
    return [f"disagreement/{m}" for m in methods if m != GRADIENT_FREE] if GRADIENT_FREE in methods else []


@register_score("disagreement", keys=_disagreement_keys)
def disagreement_scores(ctx: ScoreContext) -> Scores:
    """MSE of each CAM to the gradient-free EigenCAM of the same image (when audited)."""
    if GRADIENT_FREE not in ctx.maps:
        return {}
    free = ctx.maps[GRADIENT_FREE]
    return {f"disagreement/{m}": (cam_mse(x, free), None) for m, x in ctx.maps.items() if m != GRADIENT_FREE}

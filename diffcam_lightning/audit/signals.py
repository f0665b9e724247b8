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
from typing_extensions import override

from ..cams.postprocess import minmax_normalize
from ..saliency import cam_mse
from .metrics import ScoreContext, Scores, register_score

DISAGREEMENT_BASE = "eigencam"  # the gradient-free CAM the disagreement compares with


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
    """The audit set's maps of each method, gathered from every DDP rank, for the set-level
    signals (a spread over images needs all images at once).

    Each ``update`` appends one ``[B, M, h, w]`` block (the methods in construction order,
    NaN where a method is missing) and a ``[B, M]`` presence block; both are list states
    reduced with ``cat``, so ranks' images come back in rank order, and ``compute()`` keeps
    each method's rows where it was present.

    Args:
        methods: the methods whose maps are kept, in order.
        **kwargs: ``torchmetrics.Metric`` options.

    Attributes:
        methods: the methods whose maps are kept.

    Example:
        >>> import torch
        >>> from diffcam_lightning.audit import AuditMaps
        >>> maps = AuditMaps(["gradcam", "eigencam"])
        >>> maps.update({"gradcam": torch.zeros(2, 4, 4), "eigencam": torch.ones(2, 4, 4)})
        >>> maps.update({"gradcam": torch.ones(3, 4, 4)})
        >>> {m: tuple(v.shape) for m, v in maps.compute().items()}
        {'gradcam': (5, 4, 4), 'eigencam': (2, 4, 4)}
    """

    full_state_update = False
    maps: list[Tensor]  # [B, M, h, w] blocks
    present: list[Tensor]  # [B, M] float blocks: 1 where the method's map was given

    def __init__(self, methods: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.methods = list(methods)
        self.add_state("maps", default=[], dist_reduce_fx="cat")
        self.add_state("present", default=[], dist_reduce_fx="cat")

    @override
    def update(self, maps: dict[str, Tensor]) -> None:
        given = [m for m in self.methods if m in maps]
        if not given:
            return
        like = maps[given[0]].detach().float()
        blank = torch.full_like(like, float("nan"))
        self.maps.append(torch.stack([maps[m].detach().float() if m in maps else blank for m in self.methods], 1))
        flags = torch.tensor([m in maps for m in self.methods], dtype=torch.float32, device=like.device)
        self.present.append(flags.repeat(like.shape[0], 1))

    @override
    def compute(self) -> dict[str, Tensor]:
        if not isinstance(self.maps, Tensor) and not self.maps:
            return {}
        maps, present = dim_zero_cat(self.maps), dim_zero_cat(self.present).bool()
        return {m: maps[present[:, i], i] for i, m in enumerate(self.methods) if bool(present[:, i].any())}


def _disagreement_keys(methods: Sequence[str], pairs: Sequence[tuple[str, str]]) -> list[str]:
    return [f"disagreement/{m}" for m in methods if m != DISAGREEMENT_BASE] if DISAGREEMENT_BASE in methods else []


@register_score("disagreement", keys=_disagreement_keys)
def disagreement_scores(ctx: ScoreContext) -> Scores:
    """MSE of each CAM to the gradient-free EigenCAM of the same image (when audited)."""
    if DISAGREEMENT_BASE not in ctx.maps:
        return {}
    free = ctx.maps[DISAGREEMENT_BASE]
    return {f"disagreement/{m}": (cam_mse(x, free), None) for m, x in ctx.maps.items() if m != DISAGREEMENT_BASE}

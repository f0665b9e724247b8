"""Opt-in faithfulness and localisation metrics of the audited maps (``CAMAudit(metrics=...)``).

Each metric of :data:`diffcam_lightning.cams.metrics.METRICS` is logged per method as
``cam_audit/<metric>/<method>``. Perturbation metrics cost extra no-grad forwards of the
audit images (deletion/insertion: ~2 x steps per image and method; ROAD: 2 x percentiles;
confidence: 1), measured in ``benchmarks/README.md``; the metrics that re-explain (Random
Logit, the MPRTs, ARCC, the robustness ones) call the audit's own engine for the same
method; mask metrics need the batch's saliency maps and skip images without one. Costs of
each metric: ``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..cams import CAMEngine
from ..cams import metrics as cam_metrics
from .metrics import Scores

AUDIT_SEED = 0  # ROAD's imputation noise is drawn from its own generator: the same every epoch


def faithfulness_keys(metrics: Sequence[str], methods: Sequence[str]) -> list[str]:
    return [f"{metric}/{method}" for metric in metrics for method in methods]


def faithfulness_scores(
    model: nn.Module,
    images: Tensor,
    maps: dict[str, Tensor],
    targets: Tensor,
    metrics: Sequence[str],
    saliency: Optional[Tensor] = None,
    has_saliency: Optional[Tensor] = None,
    options: Optional[dict[str, Any]] = None,
    engine: Optional[CAMEngine] = None,
) -> Scores:
    """``{"<metric>/<method>": (values [B], mask [B] | None)}`` for one audit batch;
    ``engine`` re-explains for the metrics that need it (Random Logit: another class)."""
    options = dict(options or {})
    perturbation = [m for m in metrics if not cam_metrics.METRICS[m].needs_masks]
    with_masks = [m for m in metrics if cam_metrics.METRICS[m].needs_masks]
    out: Scores = {}
    for method, cam in maps.items():
        if perturbation:
            if any(cam_metrics.METRICS[m].group == "road" for m in perturbation):
                options["generator"] = torch.Generator(device=images.device).manual_seed(AUDIT_SEED)
            explain = None if engine is None else cam_metrics.explainer(engine, method)
            values = cam_metrics.evaluate(
                perturbation, model, images, cam, targets, explain=explain, progress=False, **options
            )
            out.update({f"{name}/{method}": (v, None) for name, v in values.items()})
        if with_masks and saliency is not None:
            out.update(_mask_scores(with_masks, method, cam, saliency, has_saliency))
    return out


def _mask_scores(
    names: Sequence[str], method: str, cam: Tensor, saliency: Tensor, has_saliency: Optional[Tensor]
) -> Scores:
    masks = saliency.to(cam.device).float()
    valid = (masks > 0.5).flatten(1).any(dim=1)
    if has_saliency is not None:
        valid = valid & has_saliency.to(cam.device).bool()
    safe = torch.where(valid[:, None, None], masks, torch.ones_like(masks))  # rows without a mask: weight 0
    return {f"{name}/{method}": (cam_metrics.MASK_METRICS[name](cam, safe), valid) for name in names}

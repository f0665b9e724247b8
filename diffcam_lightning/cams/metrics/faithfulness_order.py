"""Faithfulness by ordered removal, as Quantus 0.6 defines it: Pixel Flipping (Bach et al.
2015), Region Perturbation (Samek et al. 2016) and IROF (Rieger & Hansen 2020).

Features are Quantus's: every channel value of every pixel (a map is broadcast over the
channels), removed most relevant first and replaced by a per-image fill value
(:func:`~.common.fill_values`). Every perturbed input of every step of every image runs in
batched no-grad forwards, ``batch_size`` at a time. Quantus computes fill values and
normalisation over the whole batch it is given; these are per image, so a score does
not depend on its neighbours (the parity tests run Quantus one image at a time).
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from torch import Tensor, nn

from .common import (
    FillBaseline,
    Score,
    check_inputs,
    class_scores,
    fill_values,
    metric,
    positive_int,
    resolve_targets,
    to_input_size,
)
from .registry import MetricSpec, register_group
from .removal import DEFAULT_STEPS, features, rank_of, removal_scores, step_size

__all__ = ["DEFAULT_STEPS", "REGION_ORDERS", "irof", "pixel_flipping", "region_perturbation", "slic_segments"]

RegionOrder = Literal["morf", "lerf"]
REGION_ORDERS: tuple[RegionOrder, ...] = ("morf", "lerf")


@metric
def pixel_flipping(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Optional[Tensor] = None,
    features_in_step: Optional[int] = None,
    baseline: FillBaseline = "black",
    score: Score = "softmax",
    batch_size: int = 32,
    progress: Optional[bool] = None,
) -> dict[str, Tensor]:
    """Pixel Flipping (Bach et al. 2015; Quantus's ``PixelFlipping``).

    The area (trapezoid, unit spacing, as Quantus's ``return_auc_per_sample``) under the
    target score as the features are replaced, most relevant first, ``features_in_step``
    at a time: lower is better.

    Args:
        model, x, maps, targets: the classifier, its input ``[B, C, H, W]``, the maps
            ``[B, h, w]`` and the explained classes ``[B]`` (default: the predicted ones).
        features_in_step: features removed per step (default: the channels of
            ``ceil(H*W / 20)`` pixels; Quantus's 1 costs ``C*H*W`` forwards per image).
        baseline: the fill, ``"black"``, ``"white"``, ``"mean"`` or a number
            (:func:`~.common.fill_values`).
        score: the target's ``"softmax"`` or ``"logit"``.
        batch_size, progress: perturbed inputs per forward; a progress bar (None: if long).

    Returns:
        ``{"pixel_flipping": [B]}``.

    Raises:
        ValueError: bad shapes, ``features_in_step``, ``baseline``, ``score`` or ``batch_size``.
    """
    check_inputs(x, maps, targets)
    targets = resolve_targets(model, x, targets)
    a = features(x, maps)
    step = step_size(x, features_in_step)
    steps = math.ceil(a.shape[1] / step)
    step_of = rank_of(torch.argsort(-a, dim=1, stable=True)) // step
    fill = fill_values(x, baseline)[:, None, None, None]
    curve = removal_scores(model, x, targets, step_of, steps, fill, score, batch_size, progress, "pixel flipping")
    curve = curve.reshape(len(x), steps)
    return {"pixel_flipping": torch.trapezoid(curve.double(), dx=1.0, dim=1).float()}


def _padding(size: int, patch: int) -> tuple[int, int]:
    total = (patch - size % patch) % patch
    return total // 2, total - total // 2


@metric
def region_perturbation(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Optional[Tensor] = None,
    patch_size: int = 8,
    regions: int = 100,
    order: RegionOrder = "morf",
    baseline: FillBaseline = "black",
    score: Score = "softmax",
    batch_size: int = 32,
    progress: Optional[bool] = None,
) -> dict[str, Tensor]:
    """Region Perturbation (Samek et al. 2016; Quantus's ``RegionPerturbation``).

    AOPC, the mean over the first ``regions`` steps of ``score(x) - score(x with the k most
    (morf) / least (lerf) relevant patches removed)``: higher is better for morf. Patches of
    ``patch_size`` px tile the input padded symmetrically to a multiple of it (Quantus's
    grid), ranked by their summed map.

    Args:
        model, x, maps, targets: the classifier, its input ``[B, C, H, W]``, the maps
            ``[B, h, w]`` and the explained classes ``[B]`` (default: the predicted ones).
        patch_size: the patches' side in pixels.
        regions: patches removed, one per step.
        order: ``"morf"`` (most relevant first) or ``"lerf"``.
        baseline: the fill (:func:`~.common.fill_values`).
        score, batch_size, progress: as :func:`pixel_flipping`'s.

    Returns:
        ``{"region_perturbation": [B]}``.

    Raises:
        ValueError: bad shapes, ``order``, ``patch_size``, ``regions`` or ``baseline``.
    """
    check_inputs(x, maps, targets)
    if order not in REGION_ORDERS:
        raise ValueError(f"Unknown region order {order!r}; valid: {', '.join(REGION_ORDERS)}.")
    patch, regions = positive_int("patch_size", patch_size), positive_int("regions", regions)
    targets = resolve_targets(model, x, targets)
    pixel_rank, patches = _patch_ranks(to_input_size(maps.to(x.device), x.shape[-2:]), patch, order)
    steps = min(regions, patches)
    fill = fill_values(x, baseline)[:, None, None, None]
    original = class_scores(model, x, targets, score, batch_size, progress=False)
    after = removal_scores(
        model, x, targets, pixel_rank, steps, fill, score, batch_size, progress, "region perturbation"
    )
    return {"region_perturbation": (original[:, None] - after.reshape(len(x), steps)).mean(dim=1)}


def _patch_ranks(cam: Tensor, patch: int, order: RegionOrder) -> tuple[Tensor, int]:
    """The removal step of each pixel ``[B, H*W]`` (its patch's rank) and the number of
    patches: ``patch`` px squares tile ``cam [B, H, W]`` padded symmetrically to a multiple
    of ``patch`` (Quantus's grid), ranked by their summed map, largest first for ``morf``."""
    h, w = cam.shape[-2:]
    (top, bottom), (left, right) = _padding(h, patch), _padding(w, patch)
    cam = torch.nn.functional.pad(cam.double(), (left, right, top, bottom))
    grid_h, grid_w = cam.shape[-2] // patch, cam.shape[-1] // patch
    sums = cam.reshape(len(cam), grid_h, patch, grid_w, patch).sum(dim=(2, 4)).flatten(1)  # [B, patches], raster order
    patch_rank = rank_of(torch.argsort(-sums if order == "morf" else sums, dim=1, stable=True))
    patch_of = (
        torch.arange(top, top + h, device=cam.device)[:, None] // patch * grid_w
        + torch.arange(left, left + w, device=cam.device)[None] // patch
    ).flatten()  # [H*W]
    return patch_rank[:, patch_of], grid_h * grid_w


def slic_segments(x: Tensor) -> Tensor:
    """Quantus's default superpixels: scikit-image's SLIC with its defaults (``start_label=0``)
    on each image, channels last, float64: ``[B, H, W]`` labels."""
    try:
        from skimage.segmentation import slic
    except ImportError:
        raise ImportError(
            "IROF's default superpixels need scikit-image (pip install scikit-image), or pass segments=[B, H, W]."
        ) from None
    images = x.detach().cpu().double().permute(0, 2, 3, 1).numpy()
    return torch.stack([torch.from_numpy(slic(image, start_label=0)) for image in images]).to(x.device)


@metric
def irof(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Optional[Tensor] = None,
    segments: Optional[Tensor] = None,
    score: Score = "softmax",
    batch_size: int = 32,
    progress: Optional[bool] = None,
) -> dict[str, Tensor]:
    """IROF, Iterative Removal Of Features (Rieger & Hansen 2020; Quantus's ``IROF``).

    The area over the curve of ``score(x_j) / score(x)`` as the superpixels are removed in
    decreasing order of their mean map value, each replaced by the mean of the image as it
    is at that step (Quantus's ``"mean"`` baseline): ``S - trapz(curve)``, higher is better.

    Args:
        model, x, maps, targets: the classifier, its input ``[B, C, H, W]``, the maps
            ``[B, h, w]`` and the explained classes ``[B]`` (default: the predicted ones).
        segments: superpixels ``[B, H, W]`` labelled 0..S-1 (default :func:`slic_segments`).
        score, batch_size, progress: as :func:`pixel_flipping`'s.

    Returns:
        ``{"irof": [B]}``.

    Raises:
        ValueError: bad shapes, or a label 0..S-1 without a pixel.
        ImportError: no ``segments`` and no scikit-image.
    """
    check_inputs(x, maps, targets)
    targets = resolve_targets(model, x, targets)
    segments = slic_segments(x) if segments is None else torch.as_tensor(segments, device=x.device).long()
    if tuple(segments.shape) != (len(x), *x.shape[-2:]):
        raise ValueError(f"segments must be [B, H, W] = {(len(x), *x.shape[-2:])}; got {tuple(segments.shape)}.")
    cam = to_input_size(maps.to(x.device), x.shape[-2:]).double().flatten(1)
    labels = segments.flatten(1)
    counts = [int(s.max()) + 1 for s in labels]
    one_hot = torch.nn.functional.one_hot(labels, max(counts)).double()  # [B, H*W, S]
    step_of_segment = _segment_ranks(cam, one_hot, counts)
    pixel_step = step_of_segment.gather(1, labels)  # [B, H*W]
    pixel_fill = _running_means(x, one_hot, step_of_segment).gather(1, pixel_step)
    original = class_scores(model, x, targets, score, batch_size, progress=False)
    after = removal_scores(
        model, x, targets, pixel_step, max(counts), pixel_fill[:, None, None], score, batch_size, progress, "irof"
    ).reshape(len(x), max(counts))
    curve = (after / original[:, None]).double()
    out = torch.stack([counts[i] - torch.trapezoid(curve[i, : counts[i]], dx=1.0) for i in range(len(x))])
    return {"irof": out.float()}


def _segment_ranks(cam: Tensor, one_hot: Tensor, counts: list[int]) -> Tensor:
    """The removal step of each segment ``[B, S]``: decreasing mean map value, labels an
    image does not use last (``one_hot [B, H*W, S]``; image ``b`` uses ``counts[b]`` labels)."""
    most = one_hot.shape[2]
    size = one_hot.sum(dim=1)  # [B, S]
    used = torch.arange(most, device=cam.device)[None] < torch.tensor(counts, device=cam.device)[:, None]
    if bool((size[used] == 0).any()):
        raise ValueError("segments must label every segment 0..S-1 with at least one pixel each.")
    mean = torch.einsum("bp,bps->bs", cam, one_hot) / size.clamp(min=1)
    mean = torch.where(size > 0, mean, torch.full_like(mean, -torch.inf))  # absent labels last
    return rank_of(torch.argsort(-mean, dim=1, stable=True))


def _running_means(x: Tensor, one_hot: Tensor, step_of_segment: Tensor) -> Tensor:
    """The fill of each removal step ``[B, S]`` (Quantus's ``"mean"``): the mean of the
    image after the steps before it, each segment replaced by its step's fill. A scan over
    the segments in removal order (each is removed once, so its original values leave)."""
    flat = x.reshape(len(x), x.shape[1], -1).double()
    size = one_hot.sum(dim=1)
    seg_sum = torch.einsum("bcp,bps->bs", flat, one_hot)
    order = torch.argsort(step_of_segment, dim=1)
    total, n = flat.sum(dim=(1, 2)), flat.shape[1] * flat.shape[2]
    fills = torch.empty(len(x), one_hot.shape[2], dtype=torch.float64, device=x.device)
    for j in range(one_hot.shape[2]):
        segment = order[:, j]
        fills[:, j] = total / n
        removed = size.gather(1, segment[:, None]).squeeze(1) * x.shape[1]
        total = total - seg_sum.gather(1, segment[:, None]).squeeze(1) + removed * fills[:, j]
    return fills


register_group("pixel_flipping", pixel_flipping, {"pixel_flipping": MetricSpec("pixel_flipping", "lower")})
register_group(
    "region_perturbation", region_perturbation, {"region_perturbation": MetricSpec("region_perturbation", "higher")}
)
register_group("irof", irof, {"irof": MetricSpec("irof", "higher")})

"""Faithfulness by perturbation: deletion / insertion (RISE; torchcam 0.5
``DeletionInsertionMetric``), ROAD (Rong et al. 2022; pytorch-grad-cam) and the confidence
of the input multiplied by its map (Grad-CAM++; torchcam ``ClassificationMetric``,
pytorch-grad-cam ``DropInConfidence`` / ``CamMultImageConfidenceChange``)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Optional

import torch
from torch import Tensor, nn

from .common import (
    Baseline,
    Score,
    baseline_tensor,
    check_inputs,
    class_scores,
    metric,
    positive_int,
    resolve_targets,
    scores_of_rows,
    to_input_size,
)
from .reexplain import require_explain
from .registry import MetricSpec, register_group
from .solvers import Solver, noisy_linear_impute

DEFAULT_PERCENTILES: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)


@metric
def deletion_insertion(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Optional[Tensor] = None,
    steps: int = 20,
    baseline: Baseline = None,
    batch_size: int = 32,
    score: Score = "softmax",
    progress: Optional[bool] = None,
) -> dict[str, Tensor]:
    """Deletion and insertion (RISE; torchcam's ``DeletionInsertionMetric``).

    The areas (trapezoid over the perturbed fraction) under the target score as pixels,
    most relevant first, in ``steps`` equal groups, are replaced by ``baseline`` (deletion:
    lower is better) or restored onto it (insertion: higher is better).

    Args:
        model, x, maps, targets: the classifier, its input ``[B, C, H, W]``, the maps
            ``[B, h, w]`` and the explained classes ``[B]`` (default: the predicted ones).
        steps: groups of pixels, the points of each curve but its first.
        baseline: what removed pixels become: zeros (None), a number, a tensor that
            broadcasts to ``x`` or a function of ``x``.
        batch_size, progress: perturbed inputs per forward; a progress bar (None: if long).
        score: the target's ``"softmax"`` or ``"logit"``.

    Returns:
        ``{"deletion": [B], "insertion": [B]}``.

    Raises:
        ValueError: bad shapes, ``steps``, ``batch_size``, ``score`` or ``baseline``.
    """
    check_inputs(x, maps, targets)
    steps = positive_int("steps", steps)
    targets = resolve_targets(model, x, targets)
    positions = x.shape[-2] * x.shape[-1]
    cam = to_input_size(maps.to(x.device), x.shape[-2:]).flatten(1)
    ranks = torch.argsort(torch.argsort(cam, dim=1, descending=True, stable=True), dim=1)
    stride = -(-positions // steps)
    counts = [*range(0, positions, stride), positions]
    fractions = torch.tensor(counts, device=x.device, dtype=torch.float32) / positions
    base = baseline_tensor(baseline, x)
    original = class_scores(model, x, targets, score, batch_size, progress=False)
    interior = counts[1:-1]
    scores = _perturbed_scores(model, x, base, ranks, targets, interior, score, batch_size, progress)
    empty, deleted, inserted = scores[:, :1], scores[:, 1 : 1 + len(interior)], scores[:, 1 + len(interior) :]
    deletion = torch.cat([original[:, None], deleted, empty], dim=1)
    insertion = torch.cat([empty, inserted, original[:, None]], dim=1)
    return {
        "deletion": torch.trapezoid(deletion, fractions, dim=1),
        "insertion": torch.trapezoid(insertion, fractions, dim=1),
    }


def _perturbed_scores(
    model: nn.Module,
    x: Tensor,
    base: Tensor,
    ranks: Tensor,
    targets: Tensor,
    interior: list[int],
    score: Score,
    batch_size: int,
    progress: Optional[bool],
) -> Tensor:
    """Scores ``[B, 1 + 2 * len(interior)]`` of each image with all its pixels on ``base``
    (deletion's last point, insertion's first), then with its ``interior[j]`` most relevant
    pixels on ``base`` (deletion), then with only those on ``x`` (insertion)."""
    b, positions = len(x), x.shape[-2] * x.shape[-1]
    sample = torch.arange(b, device=x.device).repeat_interleave(1 + 2 * len(interior))
    count = torch.tensor([positions, *interior, *interior], device=x.device).repeat(b)
    inserting = torch.tensor([False] * (1 + len(interior)) + [True] * len(interior), device=x.device).repeat(b)
    flat_x, flat_base = x.flatten(2), base.flatten(2)

    def build(start: int, stop: int) -> tuple[Tensor, Tensor]:
        rows = sample[start:stop]
        relevant = ranks[rows] < count[start:stop, None]  # the most relevant `count` pixels
        original = torch.where(inserting[start:stop, None], relevant, ~relevant)
        perturbed = torch.where(original[:, None], flat_x[rows], flat_base[rows]).reshape(-1, *x.shape[1:])
        return perturbed, targets[rows]

    scores = scores_of_rows(model, len(sample), build, score, batch_size, progress, "deletion/insertion")
    return scores.reshape(b, 1 + 2 * len(interior))


@metric
def road(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Optional[Tensor] = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    noise: float = 0.01,
    batch_size: int = 32,
    score: Score = "logit",
    generator: Optional[torch.Generator] = None,
    progress: Optional[bool] = None,
    solver: Solver = "auto",
) -> dict[str, Tensor]:
    """ROAD, RemOve And Debias (Rong et al. 2022; pytorch-grad-cam's ``ROADCombined``).

    The mean over ``percentiles`` of ``score(imputed) - score(x)``, imputing the pixels at
    or above the map's p-th percentile (MoRF: lower is better) or at or below its (100-p)-th
    (LeRF: higher is better, via 1 - map); combined = (lerf - morf) / 2 (higher is better).

    Args:
        model, x, maps, targets: the classifier, its input ``[B, C, H, W]``, the maps
            ``[B, h, w]`` and the explained classes ``[B]`` (default: the predicted ones).
        percentiles: the thresholds, in [0, 100].
        noise: std of the noise added to imputed pixels.
        batch_size, progress: imputed inputs per forward; a progress bar (None: if long).
        score: the target's ``"logit"`` or ``"softmax"``.
        generator: the noise's source (default: a fresh one seeded 0 on ``x``'s device),
            never the global RNG, so a call leaves the caller's random state as it was.
        solver: the imputation's solver (:func:`~.solvers.noisy_linear_impute`).

    Returns:
        ``{"road_morf": [B], "road_lerf": [B], "road_combined": [B]}``.

    Raises:
        ValueError: bad shapes, ``percentiles``, ``batch_size``, ``score`` or ``solver``.
    """
    check_inputs(x, maps, targets)
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(0)
    if not percentiles or any(not 0 <= float(p) <= 100 for p in percentiles):
        raise ValueError(f"percentiles must be a non-empty list of values in [0, 100]; got {list(percentiles)!r}.")
    targets = resolve_targets(model, x, targets)
    cam = to_input_size(maps.to(x.device), x.shape[-2:])
    original = class_scores(model, x, targets, score, batch_size, progress=False)
    flat = cam.flatten(1).double()
    q = torch.tensor([float(p) / 100 for p in percentiles], dtype=flat.dtype, device=x.device)
    out = {}
    for name, ranked in (("road_morf", flat), ("road_lerf", 1 - flat)):
        thresholds = torch.quantile(ranked, q, dim=1).T  # [B, P], linear as numpy.percentile
        keep = (ranked[:, None, :] < thresholds[:, :, None]).reshape(*thresholds.shape, *cam.shape[-2:])
        impute = functools.partial(noisy_linear_impute, noise=noise, generator=generator, solver=solver)
        after = _imputed_scores(model, x, targets, keep, impute, score, batch_size, progress, name)
        out[name] = (after.reshape(len(x), len(percentiles)) - original[:, None]).mean(dim=1)
    out["road_combined"] = (out["road_lerf"] - out["road_morf"]) / 2
    return out


def _imputed_scores(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    keep: Tensor,
    impute: Callable[[Tensor, Tensor], Tensor],
    score: Score,
    batch_size: int,
    progress: Optional[bool],
    desc: str,
) -> Tensor:
    """Scores of each image imputed at each of its ``keep [B, P, H, W]`` masks, imputed one
    chunk at a time: ``[B*P]``."""
    rows = torch.arange(len(x), device=x.device).repeat_interleave(keep.shape[1])
    keep = keep.flatten(0, 1)

    def build(start: int, stop: int) -> tuple[Tensor, Tensor]:
        return impute(x[rows[start:stop]], keep[start:stop]), targets[rows[start:stop]]

    return scores_of_rows(model, len(rows), build, score, batch_size, progress, desc)


# ---------------------------------------------------------------- confidence


@metric
def confidence(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Optional[Tensor] = None,
    score: Score = "softmax",
    batch_size: int = 32,
    progress: Optional[bool] = None,
) -> dict[str, Tensor]:
    """The confidence of the input multiplied by its map (Grad-CAM++; torchcam, pytorch-grad-cam).

    With ``s`` the target's score of ``x`` and ``s'`` that of ``x * map`` (maps resized to
    the input, expected in [0, 1]): ``average_drop`` = relu(s - s') / s (lower is better),
    ``increase_in_confidence`` = [s' > s] (higher is better), ``drop_in_confidence`` =
    relu(s - s') (lower is better), ``confidence_change`` = s' - s (higher is better).

    Args:
        model, x, maps, targets: the classifier, its input ``[B, C, H, W]``, the maps
            ``[B, h, w]`` and the explained classes ``[B]`` (default: the predicted ones).
        score: the target's ``"softmax"`` or ``"logit"``.
        batch_size, progress: inputs per forward; a progress bar (None: if long).

    Returns:
        ``{"average_drop", "increase_in_confidence", "drop_in_confidence",
        "confidence_change"}``, each ``[B]``.

    Raises:
        ValueError: bad shapes, ``batch_size`` or ``score``.
    """
    check_inputs(x, maps, targets)
    targets = resolve_targets(model, x, targets)
    cam = to_input_size(maps.to(x.device), x.shape[-2:])
    before = class_scores(model, x, targets, score, batch_size, progress=False)
    after = class_scores(model, cam[:, None].to(x.dtype) * x, targets, score, batch_size, progress, desc="confidence")
    drop = torch.relu(before - after)
    return {
        "average_drop": drop / (before + 1e-7),
        "increase_in_confidence": (after > before).float(),
        "drop_in_confidence": drop,
        "confidence_change": after - before,
    }


# ---------------------------------------------------------------- ARCC (pytorch-grad-cam 1.5.7)

ARCC_PERCENTILES: tuple[int, ...] = (20, 40, 60, 80)


@metric
def arcc(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Optional[Tensor] = None,
    explain: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
    percentiles: Sequence[float] = ARCC_PERCENTILES,
    noise: float = 0.01,
    batch_size: int = 32,
    score: Score = "logit",
    generator: Optional[torch.Generator] = None,
    solver: Solver = "auto",
) -> dict[str, Tensor]:
    """ARCC (pytorch-grad-cam's ``ARCC``): coherency, complexity and ROAD in one score.

    The harmonic mean of coherency (``(pearson(explain(x * map), map) + 1) / 2``: the map
    explains the input it selects), 1 - complexity (mean |map|, maps expected in [0, 1])
    and ROAD combined (``2 * road_combined`` clipped to [0, 1]) over ``percentiles``. Maps
    are taken at the input's size, as pytorch-grad-cam's are.

    Args:
        model, x, maps, targets: the classifier, its input ``[B, C, H, W]``, the maps
            ``[B, h, w]`` and the explained classes ``[B]`` (default: the predicted ones).
        explain: ``explain(x, targets) -> maps``, for the coherency.
        percentiles, noise, batch_size, score, generator, solver: ROAD's (:func:`road`).

    Returns:
        ``{"arcc": [B], "arcc_coherency": [B], "arcc_complexity": [B]}``: higher is better
        for ARCC and coherency, lower for complexity.

    Raises:
        ValueError: no ``explain``, or what :func:`road` refuses.
    """
    check_inputs(x, maps, targets)
    explain = require_explain("arcc", explain, " for its coherency")
    targets = resolve_targets(model, x, targets)
    cam = to_input_size(maps.to(x.device), x.shape[-2:])
    complexity = cam.abs().flatten(1).mean(dim=1).double()
    again = to_input_size(explain(x * cam[:, None].to(x.dtype), targets).detach().to(x.device), x.shape[-2:])
    coherency = (_sample_correlation(again.flatten(1).double(), cam.flatten(1).double()) + 1) / 2
    combined = road(
        model,
        x,
        maps,
        targets,
        percentiles=percentiles,
        noise=noise,
        batch_size=batch_size,
        score=score,
        generator=generator,
        progress=False,
        solver=solver,
    )["road_combined"].double()
    road_term = (combined * 2).clamp(0, 1)
    value = 3 / (1 / (coherency + 1e-8) + 1 / ((1 - complexity) + 1e-8) + 1 / (road_term + 1e-8))
    return {"arcc": value.float(), "arcc_coherency": coherency.float(), "arcc_complexity": complexity.float()}


def _sample_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each pair of rows as pytorch-grad-cam computes it (sample
    standard deviations, + 1e-8 in the denominator): ``[B]``."""
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    n = a.shape[1] - 1
    return (a * b).sum(dim=1) / n / ((a.square().sum(dim=1) / n).sqrt() * (b.square().sum(dim=1) / n).sqrt() + 1e-8)


register_group(
    "deletion_insertion",
    deletion_insertion,
    {
        "deletion": MetricSpec("deletion_insertion", "lower"),
        "insertion": MetricSpec("deletion_insertion", "higher"),
    },
)
register_group(
    "road",
    road,
    {
        "road_morf": MetricSpec("road", "lower"),
        "road_lerf": MetricSpec("road", "higher"),
        "road_combined": MetricSpec("road", "higher"),
    },
)
register_group(
    "confidence",
    confidence,
    {
        "average_drop": MetricSpec("confidence", "lower"),
        "increase_in_confidence": MetricSpec("confidence", "higher"),
        "drop_in_confidence": MetricSpec("confidence", "lower"),
        "confidence_change": MetricSpec("confidence", "higher"),
    },
)
register_group(
    "arcc",
    arcc,
    {
        "arcc": MetricSpec("arcc", "higher", needs_explain=True),
        "arcc_coherency": MetricSpec("arcc", "higher", needs_explain=True),
        "arcc_complexity": MetricSpec("arcc", "lower", needs_explain=True),
    },
)

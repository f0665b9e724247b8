"""Faithfulness as a correlation, as Quantus 0.6 defines it: Faithfulness Correlation
(Bhatt et al. 2020) and Monotonicity Correlation (Nguyen & Martinez 2020).

Features are Quantus's (every channel value of every pixel, the map broadcast over the
channels). The random draws (feature subsets, uniform fill values) come from a seeded
``torch.Generator`` on the CPU, or are passed explicitly (``subsets=``, ``fills=``): the
parity tests hand Quantus the same draws.
"""

from __future__ import annotations

import math
from typing import Optional

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
    scores_of_rows,
)
from .correlation import pearson, spearman
from .registry import MetricSpec, register_group
from .removal import features, rank_of, removal_scores, step_size


@metric
def faithfulness_correlation(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Optional[Tensor] = None,
    runs: int = 100,
    subset_size: int = 224,
    baseline: FillBaseline = "black",
    score: Score = "logit",
    seed: int = 0,
    subsets: Optional[Tensor] = None,
    batch_size: int = 32,
    progress: Optional[bool] = None,
) -> dict[str, Tensor]:
    """Faithfulness Correlation (Bhatt et al. 2020; Quantus's ``FaithfulnessCorrelation``).

    The Pearson correlation, over ``runs`` random subsets of ``subset_size`` features,
    between the map's sum over the subset and the drop of the target score when the subset
    is replaced by ``baseline``: higher is better.

    Args:
        model, x, maps, targets: the classifier, its input ``[B, C, H, W]``, the maps
            ``[B, h, w]`` and the explained classes ``[B]`` (default: the predicted ones).
        runs, subset_size: how many subsets, of how many features.
        baseline: the fill (:func:`~.common.fill_values`).
        score: the target's ``"logit"`` or ``"softmax"``.
        seed: of the CPU generator that draws the subsets.
        subsets: feature indices into ``C*H*W``, ``[B, runs, subset_size]``, instead of draws.
        batch_size, progress: perturbed inputs per forward; a progress bar (None: if long).

    Returns:
        ``{"faithfulness_correlation": [B]}``.

    Raises:
        ValueError: bad shapes, ``runs``, ``subset_size`` (or more than ``C*H*W``),
            ``subsets``, ``baseline``, ``score`` or ``batch_size``.
    """
    check_inputs(x, maps, targets)
    targets = resolve_targets(model, x, targets)
    a = features(x, maps)
    subsets = _random_subsets(len(x), a.shape[1], runs, subset_size, seed, subsets).to(x.device)
    runs = subsets.shape[1]
    fill, flat = fill_values(x, baseline), x.reshape(len(x), -1)

    def build(start: int, stop: int) -> tuple[Tensor, Tensor]:
        rows = torch.arange(start, stop, device=x.device)
        sample, r = rows // runs, rows % runs
        perturbed = flat[sample].clone()
        perturbed.scatter_(1, subsets[sample, r], fill[sample, None].expand(-1, subsets.shape[2]).to(x.dtype))
        return perturbed.reshape(-1, *x.shape[1:]), targets[sample]

    original = class_scores(model, x, targets, score, batch_size, progress=False)
    after = scores_of_rows(model, len(x) * runs, build, score, batch_size, progress, "faithfulness correlation")
    deltas = original[:, None].double() - after.reshape(len(x), runs).double()
    sums = a.double().gather(1, subsets.flatten(1)).reshape(len(x), runs, -1).sum(dim=2)
    return {"faithfulness_correlation": pearson(sums, deltas).float()}


def _random_subsets(b: int, n: int, runs: int, subset_size: int, seed: int, subsets: Optional[Tensor]) -> Tensor:
    """``subsets`` checked, or ``runs`` random subsets of ``subset_size`` of the ``n``
    features of each of ``b`` images, drawn by a CPU generator seeded ``seed`` (Quantus's
    draw): ``[b, runs, subset_size]`` indices."""
    if subsets is None:
        runs, size = positive_int("runs", runs), positive_int("subset_size", subset_size)
        if size > n:
            raise ValueError(f"subset_size {size} exceeds the {n} features (C*H*W) of the input.")
        generator = torch.Generator().manual_seed(int(seed))
        subsets = torch.stack(
            [torch.stack([torch.randperm(n, generator=generator)[:size] for _ in range(runs)]) for _ in range(b)]
        )
    subsets = torch.as_tensor(subsets).long()
    if subsets.dim() != 3 or subsets.shape[0] != b:
        raise ValueError(
            f"subsets must be feature indices [B, runs, subset_size] with B = {b}; got {tuple(subsets.shape)}."
        )
    return subsets


@metric
def monotonicity_correlation(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Optional[Tensor] = None,
    features_in_step: Optional[int] = None,
    samples: int = 100,
    eps: float = 1e-5,
    low: float = 0.0,
    high: float = 1.0,
    score: Score = "softmax",
    seed: int = 0,
    fills: Optional[Tensor] = None,
    batch_size: int = 32,
    progress: Optional[bool] = None,
) -> dict[str, Tensor]:
    """Monotonicity Correlation (Nguyen & Martinez 2020; Quantus's ``MonotonicityCorrelation``).

    The Spearman correlation between the map's |sum| over each step of features (least
    relevant first, ``features_in_step`` at a time) and the mean squared change of the
    target score, over ``samples`` draws, when that step alone is replaced by one uniform
    value in ``[low, high)``, divided by the squared score: higher is better.

    Args:
        model, x, maps, targets: the classifier, its input ``[B, C, H, W]``, the maps
            ``[B, h, w]`` and the explained classes ``[B]`` (default: the predicted ones).
        features_in_step: features per step (default: the channels of ``ceil(H*W / 20)``
            pixels; Quantus's 1 costs ``C*H*W * samples`` forwards per image).
        samples, low, high: uniform fill values drawn per step, and their range.
        eps: scores below it are not divided by (Quantus's ``eps``).
        score: the target's ``"softmax"`` or ``"logit"``.
        seed: of the CPU generator that draws the fill values.
        fills: ``[B, steps, samples]`` fill values instead of draws.
        batch_size, progress: perturbed inputs per forward; a progress bar (None: if long).

    Returns:
        ``{"monotonicity_correlation": [B]}``.

    Raises:
        ValueError: bad shapes, ``features_in_step``, ``samples``, ``fills``, ``score`` or
            ``batch_size``.
    """
    check_inputs(x, maps, targets)
    targets = resolve_targets(model, x, targets)
    a = features(x, maps).abs().double()  # Quantus's abs=True
    step = step_size(x, features_in_step)
    steps = math.ceil(a.shape[1] / step)
    fills = _uniform_fills(len(x), steps, samples, low, high, seed, fills).to(x.device)
    step_of = rank_of(torch.argsort(a, dim=1, stable=True)) // step  # least relevant first
    original = class_scores(model, x, targets, score, batch_size, progress=False).double()
    desc = "monotonicity correlation"
    after = removal_scores(
        model, x, targets, step_of, steps, fills[..., None], score, batch_size, progress, desc, cumulative=False
    )
    inverse = torch.where(original.abs() >= eps, 1 / original.abs(), torch.ones_like(original)) ** 2
    variance = ((after.double() - original[:, None, None]) ** 2).mean(dim=2) * inverse[:, None]
    sums = torch.zeros(len(x), steps, dtype=torch.float64, device=x.device).scatter_add_(1, step_of, a)
    return {"monotonicity_correlation": spearman(sums, variance)}


def _uniform_fills(
    b: int, steps: int, samples: int, low: float, high: float, seed: int, fills: Optional[Tensor]
) -> Tensor:
    """``fills`` checked, or ``samples`` values in ``[low, high)`` per step of each of ``b``
    images, drawn by a CPU generator seeded ``seed``: ``[b, steps, samples]``."""
    if fills is None:
        samples = positive_int("samples", samples)
        generator = torch.Generator().manual_seed(int(seed))
        fills = low + (high - low) * torch.rand(b, steps, samples, generator=generator, dtype=torch.float64)
    fills = torch.as_tensor(fills)
    if tuple(fills.shape[:2]) != (b, steps) or fills.dim() != 3:
        raise ValueError(f"fills must be [B, steps, samples] = [{b}, {steps}, samples]; got {tuple(fills.shape)}.")
    return fills


register_group(
    "faithfulness_correlation",
    faithfulness_correlation,
    {"faithfulness_correlation": MetricSpec("faithfulness_correlation", "higher")},
)
register_group(
    "monotonicity_correlation",
    monotonicity_correlation,
    {"monotonicity_correlation": MetricSpec("monotonicity_correlation", "higher")},
)

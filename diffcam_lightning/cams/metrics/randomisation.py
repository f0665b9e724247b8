"""Randomisation metrics, as Quantus 0.6 defines them: Random Logit (Sixt et al. 2020), the
similarity between the map of the explained class and the map of a random other class (a
class-sensitive method draws different maps: lower is better). This is the property the
DiffGradCAMs claim. (The parameter randomisation test is :mod:`.sanity`.)

These metrics re-explain: they take ``explain(x, targets) -> maps [B, h, w]``, e.g.
``lambda x, t: engine(x, targets=t, methods="gradcam")["gradcam"]``; ``CAMAudit`` and the
report pass the audited method's own.
"""

from __future__ import annotations

import copy
from typing import Literal, Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..outputs import logits_of
from .common import (
    check_inputs,
    metric,
    normalise_by_max,
    resolve_targets,
    to_input_size,
)
from .correlation import spearman
from .reexplain import Explain, Explainer, explain_rows, input_noise, require_explain
from .registry import MetricSpec, register_group


def ssim_rows(a: Tensor, b: Tensor, win_size: int = 7) -> Tensor:
    """scikit-image's ``structural_similarity`` of each pair of rows taken as 1-D signals
    (how Quantus's ``ssim`` sees a flattened map): uniform window of ``win_size``, sample
    covariance, ``data_range`` = the pair's joint max - min, mean over the uncropped
    interior. ``[B]`` float64; NaN for a pair of equal constants (no range)."""
    a, b = a.double(), b.double()
    pad = (win_size - 1) // 2

    def mean_filter(v: Tensor) -> Tensor:  # scipy.ndimage.uniform_filter, mode "reflect" (edge repeated)
        padded = torch.cat([v[:, :pad].flip(1), v, v[:, -pad:].flip(1)], dim=1) if pad else v
        return F.avg_pool1d(padded[:, None], win_size, stride=1).squeeze(1)

    data_range = torch.maximum(a.amax(dim=1), b.amax(dim=1)) - torch.minimum(a.amin(dim=1), b.amin(dim=1))
    c1, c2 = ((0.01 * data_range) ** 2)[:, None], ((0.03 * data_range) ** 2)[:, None]
    ux, uy = mean_filter(a), mean_filter(b)
    cov_norm = win_size / (win_size - 1)
    vx = cov_norm * (mean_filter(a * a) - ux * ux)
    vy = cov_norm * (mean_filter(b * b) - uy * uy)
    vxy = cov_norm * (mean_filter(a * b) - ux * uy)
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s[:, pad : s.shape[1] - pad].mean(dim=1)


def random_other_classes(targets: Tensor, num_classes: int, seed: int = 42) -> Tensor:
    """Quantus's draw: ``numpy.random.seed(seed)``, then one index in ``[0, num_classes - 1)``
    per image into the classes other than its target."""
    if num_classes < 2:
        raise ValueError(f"Random Logit needs at least 2 classes; the model has {num_classes}.")
    index = torch.from_numpy(np.random.RandomState(seed).randint(0, num_classes - 1, len(targets))).to(targets.device)
    return index + (index >= targets).long()


@metric
def random_logit(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Optional[Tensor] = None,
    explain: Optional[Explain] = None,
    seed: int = 42,
    other_targets: Optional[Tensor] = None,
) -> dict[str, Tensor]:
    """Random Logit (Sixt et al. 2020; Quantus's ``RandomLogit``): is the map class-specific?

    The SSIM (:func:`ssim_rows`) between each map and the map of a random other class, both
    at the input's size and divided by their max: lower is better.

    Args:
        model, x, maps, targets: the classifier, its input ``[B, C, H, W]``, the maps
            ``[B, h, w]`` and the explained classes ``[B]`` (default: the predicted ones).
        explain: ``explain(x, targets) -> maps``, for the other classes' maps.
        seed: of Quantus's draw of the other classes (:func:`random_other_classes`).
        other_targets: ``[B]`` classes to compare with instead of the draw.

    Returns:
        ``{"random_logit": [B]}``.

    Raises:
        ValueError: bad shapes, no ``explain``, fewer than 2 classes, or an
            ``other_targets`` equal to its target.
    """
    check_inputs(x, maps, targets)
    explain = require_explain("random_logit", explain)
    targets = resolve_targets(model, x, targets)
    if other_targets is None:
        with torch.no_grad():
            num_classes = logits_of(model(x[:1])).shape[1]
        other_targets = random_other_classes(targets, num_classes, seed)
    other_targets = torch.as_tensor(other_targets, device=x.device).long()
    if bool((other_targets == targets).any()):
        raise ValueError("other_targets must differ from the explained targets for every image.")
    other = explain(x, other_targets).detach()
    size = x.shape[-2:]
    a = normalise_by_max(to_input_size(maps.to(x.device), size)).flatten(1)
    b = normalise_by_max(to_input_size(other.to(x.device), size)).flatten(1)
    return {"random_logit": ssim_rows(a, b).float()}


LayerOrder = Literal["bottom_up", "top_down"]
MPRT_ORDERS: tuple[LayerOrder, ...] = ("bottom_up", "top_down")


def randomised_copy(model: nn.Module, seed: int = 42, order: LayerOrder = "bottom_up") -> nn.Module:
    """Quantus's fully randomised model: a deep copy whose every module with
    ``reset_parameters`` is reset, in registration order (``bottom_up``) or reversed, each
    after ``torch.manual_seed(seed + 1)``. The caller's RNG state is restored."""
    if order not in MPRT_ORDERS:
        raise ValueError(f"Unknown layer order {order!r}; valid: {', '.join(MPRT_ORDERS)}.")
    copy_model = copy.deepcopy(model)
    modules = [m for _, m in copy_model.named_modules() if hasattr(m, "reset_parameters")]
    with torch.random.fork_rng(devices=[]):
        for module in modules if order == "bottom_up" else modules[::-1]:
            torch.manual_seed(seed + 1)
            module.reset_parameters()
    return copy_model


def histogram_entropy(maps: Tensor, bins: int = 100) -> Tensor:
    """Entropy (natural log) of the histogram of each map's values in ``bins`` equal bins
    between its min and max (``numpy.histogram`` + ``scipy.stats.entropy``): ``[B]``."""
    a = maps.flatten(1).double()
    low, high = a.amin(dim=1, keepdim=True), a.amax(dim=1, keepdim=True)
    flat = high == low  # numpy widens an empty range to +-0.5: every value in the middle bin
    span = torch.where(flat, torch.ones_like(high), high - low)
    index = (
        torch.where(flat, torch.full_like(a, bins // 2), ((a - low) / span * bins).floor()).long().clamp(0, bins - 1)
    )
    counts = torch.zeros(len(a), bins, dtype=torch.float64, device=a.device).scatter_add_(1, index, torch.ones_like(a))
    p = counts / counts.sum(dim=1, keepdim=True)
    return -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(dim=1)


@metric
def efficient_mprt(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Optional[Tensor] = None,
    explain: Optional[Explain] = None,
    seed: int = 42,
    order: LayerOrder = "bottom_up",
    bins: int = 100,
) -> dict[str, Tensor]:
    """eMPRT, efficient model parameter randomisation (Hedström et al. 2023; Quantus's ``EfficientMPRT``).

    The relative rise of the maps' histogram entropy (:func:`histogram_entropy`, at the
    input's size) from the model to its fully randomised copy (:func:`randomised_copy`):
    ``(H(random) - H(map)) / H(map)``. A method that explains the model, not the input,
    turns noisier: higher is better.

    Args:
        model, x, maps, targets: the classifier, its input ``[B, C, H, W]``, the maps
            ``[B, h, w]`` and the explained classes ``[B]`` (default: the predicted ones).
        explain: an :class:`~.reexplain.Explainer` (:func:`~.reexplain.explainer`): it
            re-explains the copy at the same layer.
        seed, order: of :func:`randomised_copy`.
        bins: of the histograms.

    Returns:
        ``{"efficient_mprt": [B]}``.

    Raises:
        ValueError: bad shapes, ``order``, or ``explain`` not an :class:`~.reexplain.Explainer`.
    """
    check_inputs(x, maps, targets)
    targets = resolve_targets(model, x, targets)
    random_maps = _random_explainer("efficient_mprt", explain, model, x, targets, seed, order)(x, targets).detach()
    size = x.shape[-2:]
    before = histogram_entropy(to_input_size(maps.to(x.device), size), bins)
    after = histogram_entropy(to_input_size(random_maps.to(x.device), size), bins)
    return {"efficient_mprt": ((after - before) / before).float()}


@metric
def smooth_mprt(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Optional[Tensor] = None,
    explain: Optional[Explain] = None,
    samples: int = 50,
    noise_magnitude: float = 0.1,
    seed: int = 42,
    order: LayerOrder = "bottom_up",
    noise_seed: int = 0,
    draws: Optional[Tensor] = None,
    batch_size: int = 32,
) -> dict[str, Tensor]:
    """sMPRT, smooth model parameter randomisation (Hedström et al. 2023; Quantus's ``SmoothMPRT``).

    At the fully randomised model (Quantus's ``return_last_correlation``): the Spearman
    correlation between |map| and the |mean map| of the randomised copy
    (:func:`randomised_copy`) over ``samples`` inputs ``x + N(0, (noise_magnitude * (max -
    min of the image))^2)``, the last one noise-free (maps at the input's size, divided by
    their max). Lower is better: the maps should change when the model does.

    Args:
        model, x, maps, targets: the classifier, its input ``[B, C, H, W]``, the maps
            ``[B, h, w]`` and the explained classes ``[B]`` (default: the predicted ones).
        explain: an :class:`~.reexplain.Explainer` (it re-explains the copy).
        samples, noise_magnitude: the inputs averaged over, and their noise's scale.
        seed, order: of :func:`randomised_copy`.
        noise_seed: of the CPU generator that draws the noise.
        draws: standard normal noise ``[samples - 1, B, C, H, W]`` instead of draws.
        batch_size: inputs per ``explain`` call.

    Returns:
        ``{"smooth_mprt": [B]}``.

    Raises:
        ValueError: bad shapes, ``samples``, ``draws``, ``order``, or ``explain`` not an
            :class:`~.reexplain.Explainer`.
    """
    check_inputs(x, maps, targets)
    targets = resolve_targets(model, x, targets)
    draws = input_noise(
        x, samples, noise_seed, draws, lambda g, shape: torch.randn(shape, generator=g), clean_last=True
    )
    std = noise_magnitude * (x.flatten(1).amax(dim=1) - x.flatten(1).amin(dim=1)).reshape(-1, 1, 1, 1)
    inputs = torch.cat([(x[None] + draws * std[None]).flatten(0, 1), x])  # [(samples - 1) * B + B, C, H, W]
    random_explain = _random_explainer("smooth_mprt", explain, model, x, targets, seed, order)
    smooth = explain_rows(
        random_explain, inputs, targets.repeat(len(draws) + 1), x.shape[-2:], batch_size, False, "smooth mprt"
    )
    smooth = smooth.reshape(len(draws) + 1, len(x), -1).mean(dim=0)
    a = normalise_by_max(to_input_size(maps.to(x.device), x.shape[-2:]).flatten(1).double()).abs()
    return {"smooth_mprt": spearman(a, normalise_by_max(smooth).abs())}


def _random_explainer(
    name: str, explain: Optional[Explain], model: nn.Module, x: Tensor, targets: Tensor, seed: int, order: LayerOrder
) -> Explainer:
    """``explain``'s method at the same layer of the fully randomised copy of ``model``
    (:func:`randomised_copy`, in eval mode); ``explain`` must be an :class:`Explainer`."""
    if not isinstance(explain, Explainer):
        raise ValueError(
            f"{name} re-explains a randomised copy of the model: pass explain=metrics.explainer(engine, method)."
        )
    return explain.for_model(randomised_copy(model, seed, order).eval(), x, targets)


register_group(
    "random_logit",
    random_logit,
    {"random_logit": MetricSpec("random_logit", "lower", family="randomisation", needs_explain=True)},
)
register_group(
    "efficient_mprt",
    efficient_mprt,
    {"efficient_mprt": MetricSpec("efficient_mprt", "higher", family="randomisation", needs_explain=True)},
)
register_group(
    "smooth_mprt",
    smooth_mprt,
    {"smooth_mprt": MetricSpec("smooth_mprt", "lower", family="randomisation", needs_explain=True)},
)

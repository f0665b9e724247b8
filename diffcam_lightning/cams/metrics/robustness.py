"""Robustness of the maps to small input noise, as Quantus 0.6 defines it: Max-Sensitivity
(Yeh et al. 2019) and the Local Lipschitz Estimate (Alvarez-Melis & Jaakkola 2018). Both
re-explain noisy copies of the input (``explain(x, targets) -> maps``, which ``CAMAudit``
and the report pass from their engine), ``batch_size`` copies per call, and keep the
largest change over ``samples`` draws (lower is better). The noise comes from a seeded
``torch.Generator`` on the CPU, or ``draws [samples, B, C, H, W]`` (the parity tests hand
Quantus the same draws).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .common import check_inputs, metric, normalise_by_max, resolve_targets, to_input_size
from .reexplain import Explain, explain_rows, input_noise, require_explain
from .registry import MetricSpec, register_group


def _map_changes(
    x: Tensor,
    maps: Tensor,
    targets: Tensor,
    noise: Tensor,
    explain: Explain,
    normalise: bool,
    batch_size: int,
    progress: Optional[bool],
    desc: str,
) -> tuple[Tensor, Tensor]:
    """How far the map of each noisy copy ``x + noise[s]`` lies from the map of ``x``, maps
    at the input's size, flattened, float64 and divided by their max if ``normalise``:
    ``(||map(x + noise[s]) - map(x)|| [samples, B], map(x) [B, H*W])``."""
    size, samples = x.shape[-2:], noise.shape[0]
    noisy = (x[None] + noise).reshape(-1, *x.shape[1:])
    again = explain_rows(explain, noisy, targets.repeat(samples), size, batch_size, progress, desc)
    a = to_input_size(maps.to(x.device), size).flatten(1).double()
    if normalise:
        a, again = normalise_by_max(a), normalise_by_max(again)
    return (again.reshape(samples, len(x), -1) - a[None]).norm(dim=2), a


@metric
def max_sensitivity(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Optional[Tensor] = None,
    explain: Optional[Explain] = None,
    samples: int = 200,
    radius: float = 0.2,
    seed: int = 0,
    draws: Optional[Tensor] = None,
    batch_size: int = 32,
    progress: Optional[bool] = None,
) -> dict[str, Tensor]:
    """Max-Sensitivity (Yeh et al. 2019; Quantus's ``MaxSensitivity``).

    The largest ``||map(x + u) - map(x)|| / ||map(x)||`` (Frobenius, maps at the input's
    size, not normalised: Quantus's default) over ``samples`` draws of ``u ~ U(-radius,
    radius)`` on every input value: lower is better.

    Args:
        model, x, maps, targets: the classifier, its input ``[B, C, H, W]``, the maps
            ``[B, h, w]`` and the explained classes ``[B]`` (default: the predicted ones).
        explain: ``explain(x, targets) -> maps``, for the noisy inputs.
        samples, radius: noisy copies of each input, and the noise's bound.
        seed: of the CPU generator that draws the noise.
        draws: the noise ``[samples, B, C, H, W]`` instead of draws.
        batch_size, progress: noisy inputs per ``explain`` call; a progress bar (None: if long).

    Returns:
        ``{"max_sensitivity": [B]}``.

    Raises:
        ValueError: bad shapes, no ``explain``, or a bad ``samples``, ``draws`` or ``batch_size``.
    """
    check_inputs(x, maps, targets)
    explain = require_explain("max_sensitivity", explain)
    targets = resolve_targets(model, x, targets)
    noise = input_noise(x, samples, seed, draws, lambda g, shape: (torch.rand(shape, generator=g) * 2 - 1) * radius)
    changes, a = _map_changes(x, maps, targets, noise, explain, False, batch_size, progress, "max-sensitivity")
    ratio = changes / a.norm(dim=1)[None]
    return {"max_sensitivity": ratio.amax(dim=0).float()}


@metric
def local_lipschitz_estimate(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Optional[Tensor] = None,
    explain: Optional[Explain] = None,
    samples: int = 200,
    mean: float = 0.0,
    std: float = 0.1,
    seed: int = 0,
    draws: Optional[Tensor] = None,
    batch_size: int = 32,
    progress: Optional[bool] = None,
) -> dict[str, Tensor]:
    """The Local Lipschitz Estimate (Alvarez-Melis & Jaakkola 2018; Quantus's ``LocalLipschitzEstimate``).

    The largest ``||m(x + n) - m(x)|| / ||n||`` (Euclidean; ``m`` = the map at the input's
    size divided by its max, as Quantus normalises) over ``samples`` draws of ``n ~
    N(mean, std)`` on every input value: lower is better.

    Args:
        model, x, maps, targets, explain, seed, draws, batch_size, progress: as
            :func:`max_sensitivity`'s.
        samples, mean, std: noisy copies of each input, and the noise's distribution.

    Returns:
        ``{"local_lipschitz_estimate": [B]}``.

    Raises:
        ValueError: as :func:`max_sensitivity`.
    """
    check_inputs(x, maps, targets)
    explain = require_explain("local_lipschitz_estimate", explain)
    targets = resolve_targets(model, x, targets)
    noise = input_noise(x, samples, seed, draws, lambda g, shape: mean + std * torch.randn(shape, generator=g))
    changes, _ = _map_changes(x, maps, targets, noise, explain, True, batch_size, progress, "local lipschitz")
    ratio = changes / (noise.double().flatten(2).norm(dim=2) + 1e-10)
    return {"local_lipschitz_estimate": ratio.amax(dim=0).float()}


register_group(
    "max_sensitivity",
    max_sensitivity,
    {"max_sensitivity": MetricSpec("max_sensitivity", "lower", family="robustness", needs_explain=True)},
)
register_group(
    "local_lipschitz_estimate",
    local_lipschitz_estimate,
    {
        "local_lipschitz_estimate": MetricSpec(
            "local_lipschitz_estimate", "lower", family="robustness", needs_explain=True
        )
    },
)

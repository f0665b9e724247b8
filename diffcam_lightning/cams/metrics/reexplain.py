"""Re-explaining, shared by the metrics that call ``explain(x, targets) -> maps`` again
(ARCC, the randomisation and the robustness metrics): the :class:`Explainer` callers pass
for one method of an engine, the check that a metric was given an ``explain``, seeded
input noise, and the maps of many inputs, ``batch_size`` per call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .common import positive_int, progress_bar, to_input_size

Explain = Callable[[Tensor, Tensor], Tensor]
Draw = Callable[[torch.Generator, tuple[int, ...]], Tensor]


def require_explain(name: str, explain: Optional[Explain], why: str = "") -> Explain:
    """``explain``, or a ValueError saying that the metric ``name`` needs one (``why``)."""
    if explain is None:
        raise ValueError(f"{name} needs explain(x, targets) -> maps{why}; pass explain=.")
    return explain


def input_noise(
    x: Tensor, samples: int, seed: int, draws: Optional[Tensor], draw: Draw, clean_last: bool = False
) -> Tensor:
    """Noise for ``x [B, C, H, W]``: ``draws`` checked, or ``draw(generator, shape)`` with a
    CPU generator seeded ``seed`` (the caller's RNG untouched), ``[samples, B, C, H, W]``
    (``samples - 1`` where the last sample is the clean input), on ``x``'s device and dtype."""
    count = "samples - 1" if clean_last else "samples"
    if draws is None:
        shape = (positive_int("samples", samples) - int(clean_last), *x.shape)
        draws = draw(torch.Generator().manual_seed(int(seed)), shape)
    draws = torch.as_tensor(draws, device=x.device, dtype=x.dtype)
    if draws.dim() != 5 or tuple(draws.shape[1:]) != tuple(x.shape):
        raise ValueError(
            f"draws must be [{count}, B, C, H, W] with [B, C, H, W] = {tuple(x.shape)}; got {tuple(draws.shape)}."
        )
    return draws


def explain_rows(
    explain: Explain,
    inputs: Tensor,
    targets: Tensor,
    size: Sequence[int],
    batch_size: int,
    progress: Optional[bool],
    desc: str,
) -> Tensor:
    """The maps of every row of ``inputs`` for its target, ``batch_size`` rows per call,
    detached, at ``size`` and flattened: ``[N, h*w]`` float64."""
    step = positive_int("batch_size", batch_size)
    out = []
    with progress_bar(-(-len(inputs) // step), progress, desc) as bar:
        for start in range(0, len(inputs), step):
            maps = explain(inputs[start : start + step], targets[start : start + step]).detach()
            out.append(to_input_size(maps.to(inputs.device), size).flatten(1).double())
            bar.update(1)
    return torch.cat(out)


class Explainer:
    """``explain(x, targets) -> maps`` of one method of a :class:`~diffcam_lightning.CAMEngine`.

    The ``explain=`` of the metrics that re-explain (``MetricSpec.needs_explain``);
    :meth:`for_model` gives the same method at the same layer of another model (a
    randomised copy, for MPRT), which a plain function could not.

    Args:
        engine: the engine whose method is scored.
        method: the CAM method.
        **compute: passed to ``engine.compute`` (``size=`` ...).

    Attributes:
        layer: the layer's name, known after the first call (None before).
    """

    def __init__(self, engine: Any, method: str, **compute: Any) -> None:
        self.engine, self.method, self.compute = engine, method, compute
        self.layer: Optional[str] = None

    def __call__(self, x: Tensor, targets: Tensor) -> Tensor:
        result = self.engine.compute(x, targets, self.method, **self.compute)
        self.layer = result.layer
        maps: Tensor = result.maps[self.method]
        return maps

    def for_model(self, model: nn.Module, x: Tensor, targets: Tensor) -> Explainer:
        from ..engine import CAMEngine

        if self.layer is None:
            self(x[:1], targets[:1])  # resolves the layer's name
        engine = CAMEngine(
            model,
            self.layer,
            perturbation_batch_size=self.engine.perturbation_batch_size,
            batch_coupling=self.engine.batch_coupling,
            layout=self.engine.layout,
            output_key=self.engine.output_key,
        )
        return Explainer(engine, self.method, **self.compute)


def explainer(engine: Any, method: str, **compute: Any) -> Explainer:
    """The ``explain=`` argument of the metrics that re-explain, for one method of an engine.

    Args:
        engine: a :class:`~diffcam_lightning.CAMEngine`.
        method: the CAM method whose maps are scored.
        **compute: passed to ``engine.compute`` (``size=`` ...).

    Returns:
        An :class:`Explainer`, ``explain(x, targets) -> maps [B, h, w]``; the MPRT metrics
        need one (they re-explain a randomised copy of the model at the same layer).
    """
    return Explainer(engine, method, **compute)

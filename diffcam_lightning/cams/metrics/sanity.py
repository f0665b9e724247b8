"""The model parameter randomisation test (Adebayo et al. 2018): Spearman rank correlation
between the maps of the model and of copies with layers re-initialised. (:func:`spearman`
lives in :mod:`.correlation`; it is importable from here as before.)"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor, nn

from ..layers import LayerSpec
from .common import metric, progress_bar
from .correlation import spearman

__all__ = ["SANITY_MODES", "SanityResult", "parameter_layers", "randomization_check", "spearman"]

SanityMode = Literal["cascading", "independent"]


@dataclass
class SanityResult:
    """Spearman correlations ``[L, B]`` between the original maps and those after
    randomising each of ``layers`` (cascading: that layer and all above it)."""

    layers: list[str]
    correlation: Tensor
    mode: SanityMode


def parameter_layers(model: nn.Module) -> list[str]:
    """Modules that own parameters, from the output back to the input (reverse of
    registration order, which follows the forward pass in torchvision and timm models)."""
    names = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    return names[::-1]


def _randomize(module: nn.Module, generator: torch.Generator) -> None:
    """Re-draws the module's own parameters from N(0, std of the original) (std 1 if constant)."""
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            std = float(p.float().std()) if p.numel() > 1 else 0.0
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            p.copy_((noise * (std if std > 0 else 1.0)).to(p))


SANITY_MODES: tuple[SanityMode, ...] = ("cascading", "independent")


@metric  # the model and its copies in eval mode, every submodule's flag restored
def randomization_check(
    model: nn.Module,
    x: Tensor,
    method: str = "gradcam",
    targets: Optional[Tensor] = None,
    target_layer: LayerSpec = None,
    mode: SanityMode = "cascading",
    layers: Optional[Sequence[str]] = None,
    seed: int = 0,
    progress: Optional[bool] = None,
) -> SanityResult:
    """The model parameter randomisation test (Adebayo et al. 2018) on a copy of ``model``.

    For each layer, re-draw its parameters and correlate the new maps with the original
    ones. A faithful method's correlation falls as layers are randomised; one that stays
    high explains the input, not the model. ``model`` itself is never changed.

    Args:
        model, x, targets: the classifier, its input ``[B, C, H, W]`` and the explained
            classes ``[B]`` (default: the predicted ones).
        method: the CAM method tested.
        target_layer: its layer (as :class:`~diffcam_lightning.CAMEngine` takes it).
        mode: ``"cascading"`` (cumulatively, top down) or ``"independent"`` (one at a time).
        layers: module names (default :func:`parameter_layers`, output first).
        seed: of the CPU generator that re-draws the parameters.
        progress: a progress bar (None: if many layers).

    Returns:
        A :class:`SanityResult`, Spearman correlations ``[L, B]``.

    Raises:
        ValueError: an unknown ``mode`` or layer.
    """
    from ..engine import CAMEngine

    if mode not in SANITY_MODES:
        raise ValueError(f"Unknown sanity-check mode {mode!r}; valid: {', '.join(SANITY_MODES)}.")
    engine = CAMEngine(model, target_layer)
    result = engine.compute(x, targets, method)
    reference, targets = next(iter(result.maps.values())), result.targets
    chosen = _chosen_layers(model, layers)
    generator = torch.Generator().manual_seed(seed)
    copy_model = copy.deepcopy(model)
    correlations = []
    with progress_bar(len(chosen), progress, "sanity") as bar:
        for name in chosen:
            if mode == "independent":
                copy_model = copy.deepcopy(model)
            _randomize(copy_model.get_submodule(name), generator)
            maps = CAMEngine(copy_model, result.layer).compute(x, targets, method).maps
            correlations.append(spearman(reference, next(iter(maps.values()))))
            bar.update(1)
    return SanityResult(layers=chosen, correlation=torch.stack(correlations), mode=mode)


def _chosen_layers(model: nn.Module, layers: Optional[Sequence[str]]) -> list[str]:
    """``layers`` checked against the model's layers with parameters (default: all of them)."""
    all_layers = parameter_layers(model)
    chosen = list(all_layers if layers is None else layers)
    unknown = [n for n in chosen if n not in all_layers]
    if unknown:
        raise ValueError(
            f"Unknown layers {unknown} for the sanity check; layers with parameters: {', '.join(all_layers[:12])}..."
        )
    return chosen

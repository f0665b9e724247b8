"""One registry of metric names for callers (``CAMAudit(metrics=...)``, the report's
faithfulness table, :func:`evaluate`): the function that computes each name (a *group*
computes several names in one pass), which way is better, and what it needs besides the
model, input, maps and targets. A family module registers its functions here; the
registry imports no family, so there is no import circle."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union, get_args

from torch import Tensor, nn

from ...registry import Registry
from ..modes import eval_mode
from .common import resolve_targets
from .reexplain import Explainer, explainer

__all__ = [  # Explainer and explainer live in .reexplain; importable from here as before
    "FAMILIES",
    "GROUPS",
    "MASK_METRICS",
    "METRICS",
    "Explainer",
    "GroupFn",
    "MetricSpec",
    "accepted_options",
    "check_metrics",
    "check_options",
    "evaluate",
    "explainer",
    "register_group",
]

GroupFn = Callable[..., dict[str, Tensor]]
Family = Literal["faithfulness", "randomisation", "localisation", "complexity", "robustness"]
FIXED = ("model", "x", "maps", "targets", "masks", "explain", "progress")  # evaluate's own arguments


@dataclass(frozen=True)
class MetricSpec:
    """What callers need to know about one metric name, without running it.

    Attributes:
        group: the registered function (:data:`GROUPS`) that computes it.
        better: which way a better map moves it, ``"higher"`` or ``"lower"``.
        needs_masks: it scores against ground-truth masks ``[B, H, W]``.
        family: its Quantus family, one of :data:`FAMILIES`.
        needs_explain: it re-explains other classes, models or inputs, so it needs an
            ``explain(x, targets) -> maps`` function.
    """

    group: str
    better: Literal["higher", "lower"]
    needs_masks: bool = False
    family: Family = "faithfulness"
    needs_explain: bool = False


FAMILIES: tuple[Family, ...] = get_args(Family)  # Quantus's grouping, in its order


class _FamilyOrdered(Registry[str, MetricSpec]):
    """Metric names listed in :data:`FAMILIES` order (registration order within a family),
    whatever order the family modules load in: sorted when read, not when written."""

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(super().__iter__(), key=lambda name: FAMILIES.index(self[name].family)))


METRICS: Registry[str, MetricSpec] = _FamilyOrdered("CAM metric")
GROUPS: Registry[str, GroupFn] = Registry("CAM metric group")
MASK_METRICS: Registry[str, Callable[[Tensor, Tensor], Tensor]] = Registry("mask metric")


def register_group(group: str, fn: GroupFn, names: dict[str, MetricSpec]) -> None:
    """Registers a metric function and the names it computes, the way in for a plug-in.

    Nothing is registered if any name or the group is taken, so a failed call leaves
    :data:`METRICS` and :data:`GROUPS` as they were.

    Args:
        group: the group's name (the ``group`` of each spec in ``names``).
        fn: ``fn(model=, x=, maps=, targets=, ..., **options) -> {name: [B]}`` for each of
            ``names``; :func:`evaluate` passes the arguments its signature takes.
        names: each metric name ``fn`` returns and its :class:`MetricSpec`.

    Raises:
        ValueError: a name or the group is already registered, a spec's family is not
            one of :data:`FAMILIES` or its ``better`` neither ``"higher"`` nor ``"lower"``.
    """
    clash = [n for n in names if n in METRICS]
    if clash or group in GROUPS:
        raise ValueError(f"CAM metrics {clash or [group]} are already registered.")
    if any(spec.family not in FAMILIES for spec in names.values()):
        raise ValueError(f"Unknown metric family in {names}; valid: {', '.join(FAMILIES)}.")
    if any(spec.better not in ("higher", "lower") for spec in names.values()):
        raise ValueError(f"A metric's better must be 'higher' or 'lower'; got {names}.")
    GROUPS.register(group, fn)
    for name, spec in names.items():
        METRICS.register(name, spec)


def check_metrics(names: Union[str, Sequence[str]]) -> list[str]:
    """The metric names a caller chose, checked against :data:`METRICS`.

    Args:
        names: one name or several, any case.

    Returns:
        The names in lower case, in the order given, once each.

    Raises:
        ValueError: a name is not in :data:`METRICS` (the message lists the valid ones).
    """
    names = [names] if isinstance(names, str) else list(names)
    out = []
    for name in names:
        key = str(name).lower()
        if key not in METRICS:
            raise ValueError(f"Unknown CAM metric {name!r}; valid: {', '.join(METRICS)}.")
        out.append(key)
    return list(dict.fromkeys(out))


def accepted_options(names: Sequence[str]) -> list[str]:
    """The keyword options that at least one of the metrics ``names`` takes.

    Args:
        names: metric names (checked as :func:`check_metrics` does).

    Returns:
        The options in the order of the metric functions' signatures, once each; the
        arguments :func:`evaluate` passes itself (model, maps, masks ...) are not options.
    """
    out: dict[str, None] = {}
    for group in dict.fromkeys(METRICS[n].group for n in check_metrics(names)):
        out.update(dict.fromkeys(p for p in inspect.signature(GROUPS[group]).parameters if p not in FIXED))
    return list(out)


def check_options(names: Sequence[str], options: dict[str, Any]) -> None:
    """Refuses an option that no chosen metric takes: a misspelling or a mistake.

    Args:
        names: metric names.
        options: keyword options meant for them (``{"steps": 10}``).

    Raises:
        ValueError: an option none of ``names`` takes; the message lists the valid ones.
    """
    valid = accepted_options(names)
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ValueError(
            f"Option(s) {unknown} are taken by none of the metrics {list(check_metrics(names))}; "
            f"valid: {', '.join(valid) or 'none'}."
        )


def evaluate(
    names: Union[str, Sequence[str]],
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    targets: Optional[Tensor] = None,
    masks: Optional[Tensor] = None,
    explain: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
    progress: Optional[bool] = None,
    **options: Any,
) -> dict[str, Tensor]:
    """Scores maps by the named metrics, each group of metrics computed once.

    Options are checked before anything runs; the model runs in eval mode, every
    submodule's mode restored after (``CAMAudit(metrics=...)`` and the report call this).

    Args:
        names: metric names of :data:`METRICS`, one or several.
        model: the classifier.
        x: its input ``[B, C, H, W]``.
        maps: the maps to score ``[B, h, w]``, from any method or library.
        targets: the explained classes ``[B]``; default the model's predictions.
        masks: ground-truth masks ``[B, H, W]``, for the localisation metrics.
        explain: ``explain(x, targets) -> maps`` (see :func:`explainer`), for the metrics
            that re-explain (randomisation, robustness, ARCC).
        progress: show progress bars (default: only for long runs).
        **options: options of the metric functions that take them (``steps``,
            ``batch_size`` ...; :func:`accepted_options` lists them).

    Returns:
        ``{name: [B]}`` in the order of ``names``; NaN for an image whose map is not finite.

    Raises:
        ValueError: an unknown name, an option no chosen metric takes, or a metric that
            needs ``masks`` or ``explain`` without it.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from diffcam_lightning.cams import metrics as M
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(
        ...     nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
        ... )
        >>> x, maps = torch.rand(2, 3, 32, 32), torch.rand(2, 8, 8)
        >>> M.evaluate(["deletion", "sparseness"], model, x, maps, steps=4)
        {'deletion': tensor([0.3..., 0.3...]), 'sparseness': tensor([0.3..., 0.3...])}
        >>> M.evaluate("deletion", model, x, maps, stpes=4)
        Traceback (most recent call last):
        ...
        ValueError: Option(s) ['stpes'] are taken by none of the metrics ['deletion']; valid: steps, baseline, batch_size, score.
    """
    names = check_metrics(names)
    check_options(names, options)
    _check_needs(names, masks is not None, explain is not None)
    fixed = {"model": model, "x": x, "maps": maps, "masks": masks, "explain": explain, "progress": progress}
    with eval_mode(model):
        fixed["targets"] = resolve_targets(model, x, targets)
        results = _run_groups(names, {**fixed, **options})
    return {n: results[n] for n in names}


def _check_needs(names: list[str], has_masks: bool, has_explain: bool) -> None:
    """Refuses metrics that need masks or an ``explain`` the caller did not pass."""
    for needing, given, what in (
        ([n for n in names if METRICS[n].needs_masks], has_masks, "masks [B, H, W]; pass masks="),
        ([n for n in names if METRICS[n].needs_explain], has_explain, "explain(x, targets) -> maps; pass explain="),
    ):
        if needing and not given:
            raise ValueError(f"Metrics {needing} need {what}.")


def _run_groups(names: list[str], arguments: dict[str, Any]) -> dict[str, Tensor]:
    """Calls each group of ``names`` once, with the ``arguments`` its signature takes."""
    results: dict[str, Tensor] = {}
    for group in dict.fromkeys(METRICS[n].group for n in names):
        fn = GROUPS[group]
        accepted = inspect.signature(fn).parameters
        results.update(fn(**{k: v for k, v in arguments.items() if k in accepted}))
    return results

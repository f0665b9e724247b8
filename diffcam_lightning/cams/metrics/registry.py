"""One registry of metric names for callers (``CAMAudit(metrics=...)``, the report's
faithfulness table, :func:`evaluate`): the function that computes each name (a *group*
computes several names in one pass), which way is better, and what it needs besides the
model, input, maps and targets. A family module registers its functions here; the
registry imports no family, so there is no import circle."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

from torch import Tensor, nn

from ...registry import Registry
from ..modes import eval_mode
from .common import _resolve_targets

GroupFn = Callable[..., dict[str, Tensor]]
FIXED = ("model", "x", "maps", "targets", "masks", "explain", "progress")  # evaluate's own arguments


@dataclass(frozen=True)
class MetricSpec:
    """A metric name: the group that computes it, which way is better, its Quantus family,
    and whether it needs ground-truth masks or an ``explain(x, targets) -> maps`` function
    (metrics that re-explain other classes, models or inputs)."""

    group: str
    better: str  # "higher" or "lower"
    needs_masks: bool = False
    family: str = "faithfulness"
    needs_explain: bool = False


FAMILIES = ("faithfulness", "randomisation", "localisation", "complexity", "robustness")  # Quantus's grouping


class _FamilyOrdered(Registry[str, MetricSpec]):
    """Metric names listed in :data:`FAMILIES` order (registration order within a family),
    whatever order the family modules load in: sorted when read, not when written."""

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(super().__iter__(), key=lambda name: FAMILIES.index(self[name].family)))

    def names(self) -> tuple[str, ...]:
        return tuple(self)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self)})"


METRICS: Registry[str, MetricSpec] = _FamilyOrdered("CAM metric")
GROUPS: Registry[str, GroupFn] = Registry("CAM metric group")
MASK_METRICS: Registry[str, Callable[[Tensor, Tensor], Tensor]] = Registry("mask metric")


def register_group(group: str, fn: GroupFn, names: dict[str, MetricSpec]) -> None:
    """Registers ``fn`` (returning ``{name: [B]}`` for each of ``names``) under ``group``;
    nothing is registered if any name or the group is taken."""
    clash = [n for n in names if n in METRICS]
    if clash or group in GROUPS:
        raise ValueError(f"CAM metrics {clash or [group]} are already registered.")
    if any(spec.family not in FAMILIES for spec in names.values()):
        raise ValueError(f"Unknown metric family in {names}; valid: {', '.join(FAMILIES)}.")
    GROUPS.register(group, fn)
    for name, spec in names.items():
        METRICS.register(name, spec)


class Explainer:
    """``explain(x, targets) -> maps`` of one method of a :class:`~diffcam_lightning.CAMEngine`
    (for the metrics that re-explain, ``needs_explain``); :meth:`for_model` gives the same
    method at the same layer of another model (a randomised copy, for MPRT)."""

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
            scorecam_batch_size=self.engine.scorecam_batch_size,
            batch_coupling=self.engine.batch_coupling,
            layout=self.engine.layout,
            output_key=self.engine.output_key,
        )
        return Explainer(engine, self.method, **self.compute)


def explainer(engine: Any, method: str, **compute: Any) -> Explainer:
    """The :class:`Explainer` of one method of ``engine`` (``compute``: ``size=`` ...)."""
    return Explainer(engine, method, **compute)


def check_metrics(names: Union[str, Sequence[str]]) -> list[str]:
    """The names, validated (lower case, in order, once each)."""
    names = [names] if isinstance(names, str) else list(names)
    out = []
    for name in names:
        key = str(name).lower()
        if key not in METRICS:
            raise ValueError(f"Unknown CAM metric {name!r}; valid: {', '.join(METRICS)}.")
        out.append(key)
    return list(dict.fromkeys(out))


def accepted_options(names: Sequence[str]) -> list[str]:
    """The keyword options that at least one of the metrics ``names`` takes."""
    out: dict[str, None] = {}
    for group in dict.fromkeys(METRICS[n].group for n in check_metrics(names)):
        out.update(dict.fromkeys(p for p in inspect.signature(GROUPS[group]).parameters if p not in FIXED))
    return list(out)


def check_options(names: Sequence[str], options: dict[str, Any]) -> None:
    """An option that no chosen metric takes is a misspelling or a mistake: say so."""
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
    """The named metrics of ``maps`` (each group computed once): ``{name: [B]}``.
    ``options`` go to the group functions that take them (``steps``, ``batch_size``, ...);
    one that none takes is an error. The model runs in eval mode, its modes restored."""
    names = check_metrics(names)
    check_options(names, options)
    for need, given, what in (
        ("needs_masks", masks, "masks [B, H, W]; pass masks="),
        ("needs_explain", explain, "explain(x, targets) -> maps; pass explain="),
    ):
        needing = [n for n in names if getattr(METRICS[n], need)]
        if needing and given is None:
            raise ValueError(f"Metrics {needing} need {what}.")
    fixed = {"model": model, "x": x, "maps": maps, "masks": masks, "explain": explain, "progress": progress}
    results: dict[str, Tensor] = {}
    with eval_mode(model):
        fixed["targets"] = _resolve_targets(model, x, targets)
        for group in dict.fromkeys(METRICS[n].group for n in names):
            fn = GROUPS[group]
            accepted = inspect.signature(fn).parameters
            kwargs = {k: v for k, v in {**fixed, **options}.items() if k in accepted}
            results.update(fn(**kwargs))
    return {n: results[n] for n in names}

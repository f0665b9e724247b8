"""The audit's figures: per-sample scores, grouped in families, summed in one Metric.

A *score family* is a small pure function ``fn(ctx) -> {key: (values [B], mask [B] | None)}``
registered in ``SCORE_FAMILIES``; ``AuditScores`` (a torchmetrics ``Metric``) keeps one
sum and one count per key, reduced with ``sum`` across DDP ranks, so each rank audits its
share of the set and ``compute()`` returns the figures of the whole set. A NaN (or
infinite) score is left out of its mean and counted apart (``AuditScores.excluded``); the
``nan`` family counts the audit images whose map of each method is not finite.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import torch
from torch import Tensor
from torch.nn import functional as F
from torchmetrics import Metric
from typing_extensions import override

from ..registry import Registry
from ..saliency import cam_entropy, cam_mse, saliency_mse

Scores = dict[str, tuple[Tensor, Optional[Tensor]]]


@dataclass
class ScoreContext:
    """Everything a score family (``register_score``) may look at for one audit batch.

    Attributes:
        maps: method -> ``[B, h, w]`` on the CAM grid, min-max normalised.
        sham: the SHAM ``[h, w]``; ``None`` when it covers the whole grid (no target).
        reference: method -> ``[B, h, w]`` at the reference model (empty without one).
        drift_pairs: the ``(variant, base)`` pairs of the audit.
        saliency, has_saliency: the batch's saliency maps ``[B, H, W]`` and which are real.

    Example:
        >>> import torch
        >>> from diffcam_lightning.audit.metrics import ScoreContext
        >>> ctx = ScoreContext(maps={"gradcam": torch.rand(2, 7, 7)}, sham=None)
        >>> sorted(ctx.maps), ctx.reference, ctx.drift_pairs
        (['gradcam'], {}, ())
    """

    maps: dict[str, Tensor]  # method -> [B, h, w] on the CAM grid, min-max normalised
    sham: Optional[Tensor]  # [h, w]; None when it covers the whole grid (no target after min-max)
    reference: dict[str, Tensor] = field(default_factory=dict)  # method -> [B, h, w] at the reference model
    drift_pairs: Sequence[tuple[str, str]] = ()  # (variant, base)
    saliency: Optional[Tensor] = None  # [B, H, W]
    has_saliency: Optional[Tensor] = None  # bool [B]


ScoreFn = Callable[[ScoreContext], Scores]
ScoreFamily = ScoreFn  # the name of a family's function type before ``Family`` held the whole entry
# (methods, drift pairs) -> every key the family can produce (fixed up front: DDP syncs fixed-size states)
KeysFn = Callable[[Sequence[str], Sequence[tuple[str, str]]], list[str]]
Reduce = Literal["mean", "sum"]


@dataclass(frozen=True)
class Family:
    """One registered score family: its function, the keys it may return and how its
    figure is reduced over the audit set (``"sum"``: a count, not a mean). Calling the
    entry runs the function, so ``SCORE_FAMILIES[name](ctx)`` reads as it always did."""

    score: ScoreFn
    keys: KeysFn
    reduce: Reduce = "mean"

    def __call__(self, ctx: ScoreContext) -> Scores:
        return self.score(ctx)


SCORE_FAMILIES: Registry[str, Family] = Registry("score family")


class _FamilyKeys(Mapping[str, KeysFn]):
    """``SCORE_KEYS``: each family's keys function, read live from ``SCORE_FAMILIES``."""

    def __getitem__(self, name: str) -> KeysFn:
        return SCORE_FAMILIES[name].keys

    def __iter__(self) -> Iterator[str]:
        return iter(SCORE_FAMILIES)

    def __len__(self) -> int:
        return len(SCORE_FAMILIES)


SCORE_KEYS: Mapping[str, KeysFn] = _FamilyKeys()


def per_method(*families: str) -> KeysFn:
    return lambda methods, pairs: [f"{f}/{m}" for f in families for m in methods]


def register_score(
    name: str, keys: KeysFn, reduce: Reduce = "mean", *, replace: bool = False
) -> Callable[[ScoreFn], ScoreFn]:
    """Add a score family; ``keys(methods, drift_pairs)`` lists the keys it may return
    (logged as ``cam_audit/<key>``; a key with no sample in an audit is not logged).
    ``reduce="sum"`` logs the sum over the audit set (a count) instead of the mean; a
    taken name is refused unless ``replace``."""
    if reduce not in ("mean", "sum"):
        raise ValueError(f"Score family {name!r}: reduce must be 'mean' or 'sum'; got {reduce!r}.")

    def decorator(fn: ScoreFn) -> ScoreFn:
        SCORE_FAMILIES.register(name, Family(fn, keys, reduce), replace=replace)
        return fn

    return decorator


def score_keys(methods: Sequence[str], pairs: Sequence[tuple[str, str]], reduce: Optional[Reduce] = None) -> list[str]:
    """Every key of the registered families (only those of one ``reduce`` kind if given)."""
    families = [f for f in SCORE_FAMILIES.values() if reduce is None or f.reduce == reduce]
    return [k for family in families for k in family.keys(methods, pairs)]


@register_score("nan", keys=per_method("nan"), reduce="sum")
def nan_scores(ctx: ScoreContext) -> Scores:
    """How many audit images have a NaN or infinite map: their scores are left out of every mean."""
    return {f"nan/{m}": ((~torch.isfinite(x)).flatten(1).any(dim=1).float(), None) for m, x in ctx.maps.items()}


@register_score("drift", keys=lambda methods, pairs: [f"drift/{v}" for v, _ in pairs])
def drift_scores(ctx: ScoreContext) -> Scores:
    """The paper's similarity score: MSE between a DiffGradCAM variant and its base."""
    return {f"drift/{v}": (cam_mse(ctx.maps[v], ctx.maps[b]), None) for v, b in ctx.drift_pairs}


@register_score("entropy", keys=per_method("entropy"))
def entropy_scores(ctx: ScoreContext) -> Scores:
    """CAM entropy in nats (ln of the pixel count for a uniform map)."""
    return {f"entropy/{m}": (cam_entropy(x), None) for m, x in ctx.maps.items()}


@register_score("sham_mse", keys=per_method("sham_mse"))
def sham_scores(ctx: ScoreContext) -> Scores:
    """MSE to the SHAM: the lower, the more the CAM looks like the hoax."""
    if ctx.sham is None:
        return {}
    return {f"sham_mse/{m}": (cam_mse(x, ctx.sham.to(x.device)), None) for m, x in ctx.maps.items()}


@register_score("susceptibility", keys=per_method("susceptibility"))
def susceptibility_scores(ctx: ScoreContext) -> Scores:
    """MSE to the same method's map at the reference model (paper: susceptibility)."""
    return {
        f"susceptibility/{m}": (cam_mse(x, ctx.reference[m]), None) for m, x in ctx.maps.items() if m in ctx.reference
    }


@register_score("localisation", keys=per_method("saliency_mse", "pointing"))
def localisation_scores(ctx: ScoreContext) -> Scores:
    """Agreement with the batch's saliency maps: MSE on the CAM grid and the pointing game."""
    if ctx.saliency is None:
        return {}
    mask = ctx.has_saliency
    out: Scores = {}
    for m, x in ctx.maps.items():
        out[f"saliency_mse/{m}"] = (saliency_mse(x, ctx.saliency), mask)
        out[f"pointing/{m}"] = (pointing_game(x, ctx.saliency), mask)
    return out


def pointing_game(maps: Tensor, saliency: Tensor, threshold: float = 0.5) -> Tensor:
    """1.0 where the maximum of the CAM, upsampled bilinearly to the saliency map's size,
    falls on a pixel of the map above ``threshold`` (after min-max), else 0.0."""
    up = F.interpolate(maps.float().unsqueeze(1), size=saliency.shape[-2:], mode="bilinear", align_corners=False)
    idx = up.flatten(1).argmax(dim=1)
    sal = saliency.float().flatten(1).to(maps.device)
    lo, hi = sal.amin(1, keepdim=True), sal.amax(1, keepdim=True)
    on = (sal - lo) / (hi - lo + 1e-7) > threshold
    return on.gather(1, idx.unsqueeze(1)).squeeze(1).float()


def score_batch(ctx: ScoreContext, families: Sequence[str]) -> Scores:
    out: Scores = {}
    for name in families:
        out.update(SCORE_FAMILIES[name](ctx))
    return out


def audit_figures(
    total: Tensor, count: Tensor, keys: Sequence[str], sum_keys: Collection[str] = ()
) -> dict[str, Tensor]:
    """``AuditScores``' functional core: the mean ``total / count`` of each key with a
    finite sample (its ``total`` for ``sum_keys``); keys without one are left out."""
    means = total / count.clamp(min=1)
    return {k: (total[i] if k in sum_keys else means[i]).float() for i, k in enumerate(keys) if bool(count[i] > 0)}


def nonfinite_counts(nonfinite: Tensor, keys: Sequence[str]) -> dict[str, int]:
    """``{key: count}`` of the non-finite samples of each key that had one."""
    return {k: int(nonfinite[i]) for i, k in enumerate(keys) if nonfinite[i] > 0}


class AuditScores(Metric):
    """Means of per-sample scores for a fixed list of keys, synced across processes.

    Each rank sums its own samples; ``compute()`` reduces the sums with ``sum`` across
    DDP ranks, so the figures are those of the whole audit set. Non-finite scores are left
    out of means and sums and counted apart, so a diverging model neither lowers a mean
    (NaN was 0) nor hides among the finite samples. ``compute()`` has no side effects.

    Args:
        keys: the keys ``update`` may receive, each logged as its mean.
        sum_keys: keys logged as their sum over the audit set (a count) instead.
        **kwargs: ``torchmetrics.Metric`` options (``sync_on_compute``, ...).

    Attributes:
        score_keys: every key, means first, in order (the index of the states).
        sum_keys: the keys summed instead of averaged.
        excluded: ``{key: count}`` of the non-finite scores left out since the last
            ``reset()``, synced across processes like ``compute()``: under DDP a collective,
            read on every rank (as ``compute()`` is called on every rank).

    Raises:
        KeyError: ``update`` got a key not given at construction (DDP syncs fixed-size states).

    Example:
        >>> import torch
        >>> from diffcam_lightning.audit import AuditScores
        >>> scores = AuditScores(["drift/gradcam"], sum_keys=["nan/gradcam"])
        >>> scores.update({"drift/gradcam": (torch.tensor([0.5, float("nan"), 0.25]), None)})
        >>> scores.update({"nan/gradcam": (torch.tensor([0.0, 1.0, 0.0]), None)})
        >>> {k: round(float(v), 3) for k, v in scores.compute().items()}
        {'drift/gradcam': 0.375, 'nan/gradcam': 1.0}
        >>> scores.excluded
        {'drift/gradcam': 1}
    """

    full_state_update = False
    total: Tensor  # the add_state states below: one sum, one count, one non-finite count per key
    count: Tensor
    nonfinite: Tensor

    def __init__(self, keys: Sequence[str], sum_keys: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.score_keys = list(dict.fromkeys([*keys, *sum_keys]))
        self.sum_keys = set(sum_keys)
        self._index = {k: i for i, k in enumerate(self.score_keys)}
        n = len(self.score_keys)
        self.add_state("total", default=torch.zeros(n, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(n, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("nonfinite", default=torch.zeros(n, dtype=torch.float32), dist_reduce_fx="sum")

    @property
    def excluded(self) -> dict[str, int]:
        """Synced as ``compute()`` syncs (same process group, same ``sync_on_compute``): under
        DDP a collective, so every rank reads it, as every rank calls ``compute()``."""
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, process_group=self.process_group, should_sync=self.sync_on_compute
        ):
            return nonfinite_counts(self.nonfinite, self.score_keys)

    @override
    def update(self, scores: Scores) -> None:
        for key, (values, mask) in scores.items():
            if key not in self._index:
                raise KeyError(f"AuditScores has no key {key!r}; known keys: {', '.join(self.score_keys)}.")
            values = values.detach().float().reshape(-1).to(self.total.device)
            weight = torch.ones_like(values) if mask is None else mask.reshape(-1).to(values)
            finite = torch.isfinite(values)
            i = self._index[key]
            self.total[i] += torch.where(finite, values, torch.zeros_like(values)).mul(weight).sum()
            self.count[i] += weight[finite].sum()
            self.nonfinite[i] += weight[~finite].sum()

    @override
    def compute(self) -> dict[str, Tensor]:
        return audit_figures(self.total, self.count, self.score_keys, self.sum_keys)

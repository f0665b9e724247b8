"""Behaviour-grounded audit signals: do the maps point where the model's output responds?

A fooled explanation claims importance for pixels the decision does not use, whatever the
attacked method or the target mask. These signals check each map against the model's own
behaviour on the audit images, measured with no-grad forwards of perturbed copies:

- ``occlusion``: the reference. The image is cut into regions on the CAM grid (coarsened
  to at most ``occlusion_grid`` x ``occlusion_grid``); covering region ``r`` with the
  image's mean colour drops the explained class's log-probability by ``drop[r]``.
  Log-probabilities, so a saturated model (p = 0.9999) still shows which region matters.
- ``behaviour_agreement/<m>``: Pearson correlation, per image, of the map (average-pooled
  to the regions) with the occlusion drops; 0 for a blank map or a flat response.
- ``deletion_gap/<m>``: the log-probability drop when the map's top ``fraction`` of CAM
  cells is covered (mean-value baseline) minus the mean drop for ``random_regions`` random
  sets of as many cells (seeded: the same every epoch). Large when the map's top region is
  what the decision uses, about 0 (or below) when it is not; 0 for a blank map, which
  claims no region. The mean baseline, not a blur: a blurred object keeps its colour.
- ``plausibility_gap/<m>`` (where the audit image has a saliency annotation): the share of
  the map's mass on the annotated pixels minus the share of the occlusion drops' (positive)
  mass on them. Plausible fooling: the map shows what the annotator outlined while the
  decision uses something else.

Everything runs in eval mode under the audit's guard (``guard.py``); forwards are batched
(``batch_size`` perturbed images per forward) and nothing is kept between audits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..cams.outputs import logits_of
from .metrics import Scores

BEHAVIOUR_SEED = 0  # the random regions of the deletion gap: the same cells every audit
BEHAVIOUR_SIGNALS = ("behaviour_agreement", "deletion_gap", "plausibility_gap")
Model = Union[nn.Module, Callable[[Tensor], Tensor]]  # anything whose output holds the logits


@dataclass(frozen=True)
class BehaviourOptions:
    """How the behavioural signals perturb the audit images (CAMAudit's ``behaviour_*`` arguments)."""

    occlusion_grid: int = 4  # at most this many regions per side (CAM cells pooled together)
    fraction: float = 0.1  # the top share of CAM cells the deletion gap covers
    random_regions: int = 2  # random cell sets of the same size the gap is measured against
    batch_size: int = 128  # perturbed images per forward

    def __post_init__(self) -> None:
        if self.occlusion_grid < 1:
            raise ValueError(f"CAMAudit behaviour occlusion_grid must be >= 1; got {self.occlusion_grid}.")
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"CAMAudit behaviour fraction must be in (0, 1); got {self.fraction}.")
        if self.random_regions < 1 or self.batch_size < 1:
            raise ValueError("CAMAudit behaviour random_regions and batch_size must be >= 1.")


def behaviour_keys(methods: list[str]) -> list[str]:
    return [f"{s}/{m}" for s in BEHAVIOUR_SIGNALS for m in methods]


def log_probs(model: Model, images: Tensor, targets: Tensor, batch_size: int) -> Tensor:
    """Log-probability of ``targets`` for each image, in no-grad chunks of ``batch_size``."""
    out = []
    with torch.no_grad():
        for lo in range(0, images.shape[0], batch_size):
            logits = logits_of(model(images[lo : lo + batch_size])).float()
            out.append(logits.log_softmax(dim=1).gather(1, targets[lo : lo + batch_size, None]).squeeze(1))
    return torch.cat(out)


def _covered(images: Tensor, cells: Tensor) -> Tensor:
    """``images [B, C, H, W]`` with the True cells of ``cells [B, K, h, w]`` set to each
    image's mean colour: ``[B * K, C, H, W]``."""
    k = cells.shape[1]
    up = F.interpolate(cells.flatten(0, 1)[:, None].float(), size=images.shape[-2:], mode="nearest")
    x = images.repeat_interleave(k, dim=0)
    mean = x.mean(dim=(2, 3), keepdim=True)
    return torch.where(up.bool(), mean, x)


def _drops(model: Model, images: Tensor, targets: Tensor, base: Tensor, cells: Tensor, batch_size: int) -> Tensor:
    """Log-probability drop ``[B, K]`` for each of the ``K`` cell masks of each image."""
    b, k = cells.shape[:2]
    out = []
    rows = max(1, batch_size // max(k, 1))  # images per chunk, so a chunk holds ~batch_size perturbed copies
    for lo in range(0, b, rows):
        hi = min(lo + rows, b)
        x = _covered(images[lo:hi], cells[lo:hi])
        lp = log_probs(model, x, targets[lo:hi].repeat_interleave(k), batch_size)
        out.append(base[lo:hi, None] - lp.view(hi - lo, k))
    return torch.cat(out)


def region_grid(grid: tuple[int, int], occlusion_grid: int) -> tuple[int, int]:
    """The occlusion regions per side: the CAM grid, pooled down to at most ``occlusion_grid``."""
    return min(grid[0], occlusion_grid), min(grid[1], occlusion_grid)


def occlusion(
    model: Model,
    images: Tensor,
    targets: Tensor,
    grid: tuple[int, int],
    options: BehaviourOptions,
    base: Optional[Tensor] = None,
) -> Tensor:
    """Log-probability drops ``[B, gh, gw]`` when each region of the (pooled) CAM grid is
    covered with the image's mean colour."""
    gh, gw = region_grid(grid, options.occlusion_grid)
    b = images.shape[0]
    base = log_probs(model, images, targets, options.batch_size) if base is None else base
    cells = torch.eye(gh * gw, dtype=torch.bool, device=images.device).view(1, gh * gw, gh, gw).expand(b, -1, -1, -1)
    return _drops(model, images, targets, base, cells, options.batch_size).view(b, gh, gw)


def pooled(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``[B, h, w]`` averaged onto ``size`` (adaptive: uneven grids pool unevenly)."""
    return F.adaptive_avg_pool2d(x.float()[:, None], size)[:, 0]


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Per-row correlation of ``[B, ...]`` tensors; 0 where either row is constant."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(den > 1e-12, (a * b).sum(1) / den.clamp(min=1e-12), torch.zeros_like(den))


def mass_on(x: Tensor, mask: Tensor) -> Tensor:
    """Share of the non-negative ``x [B, h, w]``'s mass on ``mask [B, h, w]`` (in [0, 1]);
    NaN where ``x`` has no mass."""
    x = x.clamp(min=0).flatten(1)
    total = x.sum(1)
    share = (x * mask.flatten(1).float()).sum(1) / total.clamp(min=1e-12)
    return torch.where(total > 1e-12, share, torch.full_like(share, float("nan")))


def top_cells(maps: Tensor, k: int) -> Tensor:
    """Bool ``[B, h, w]``: each map's ``k`` largest cells (ties broken by position)."""
    flat = torch.nan_to_num(maps.float(), nan=0.0).flatten(1)
    idx = flat.topk(k, dim=1).indices
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True).view_as(maps)


def random_cells(
    batch: int, grid: tuple[int, int], k: int, count: int, device: torch.device, offset: int = 0
) -> Tensor:
    """Bool ``[B, count, h, w]``: ``count`` seeded random sets of ``k`` cells per image; those of
    audit image ``offset + i`` whatever the batch (or DDP shard) it comes in."""
    g = torch.Generator().manual_seed(BEHAVIOUR_SEED)
    n = grid[0] * grid[1]
    idx = torch.rand(offset + batch, count, n, generator=g)[offset:].argsort(dim=2)[..., :k]
    cells = torch.zeros(batch, count, n, dtype=torch.bool).scatter_(2, idx, True)
    return cells.view(batch, count, *grid).to(device)


def deletion_drops(
    model: Model,
    images: Tensor,
    targets: Tensor,
    maps: dict[str, Tensor],
    options: BehaviourOptions,
    base: Tensor,
    offset: int = 0,
) -> tuple[dict[str, Tensor], Tensor]:
    """``({method: drop [B] of its top cells}, mean drop [B] of the random cells)``; methods
    with the same top cells on an image share one forward."""
    any_map = next(iter(maps.values()))
    b, grid = any_map.shape[0], (int(any_map.shape[-2]), int(any_map.shape[-1]))
    k = max(1, round(options.fraction * grid[0] * grid[1]))
    names = list(maps)
    tops = torch.stack([top_cells(maps[m], k) for m in names], dim=1)  # [B, M, h, w]
    rand = random_cells(b, grid, k, options.random_regions, images.device, offset)
    cells = torch.cat([tops, rand], dim=1)  # [B, M + R, h, w]
    # one forward per distinct cell set of an image (gradient CAMs often share their top cells)
    keys = torch.cat(
        [
            torch.arange(b, device=images.device).repeat_interleave(cells.shape[1])[:, None],
            cells.flatten(2).flatten(0, 1).long(),
        ],
        dim=1,
    )
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    owner = unique[:, 0]
    drops = torch.empty(unique.shape[0], device=images.device)
    cell_sets = unique[:, 1:].bool().view(-1, 1, *grid)
    rows = max(1, options.batch_size)
    for lo in range(0, unique.shape[0], rows):
        hi = min(lo + rows, unique.shape[0])
        who = owner[lo:hi]
        x = _covered(images[who], cell_sets[lo:hi])
        drops[lo:hi] = base[who] - log_probs(model, x, targets[who], options.batch_size)
    per = drops[inverse].view(b, cells.shape[1])
    top = {m: per[:, i] for i, m in enumerate(names)}
    return top, per[:, len(names) :].mean(dim=1)


def constant(maps: Tensor) -> Tensor:
    """Bool ``[B]``: maps with no structure (blank, or all one value)."""
    flat = torch.nan_to_num(maps.float(), nan=0.0).flatten(1)
    return (flat.amax(1) - flat.amin(1)) <= 1e-6


def behaviour_scores(
    model: Model,
    images: Tensor,
    targets: Tensor,
    maps: dict[str, Tensor],
    options: BehaviourOptions = BehaviourOptions(),
    saliency: Optional[Tensor] = None,
    has_saliency: Optional[Tensor] = None,
    offset: int = 0,
) -> tuple[Scores, Tensor]:
    """``({"<signal>/<method>": (values [B], mask [B] | None)}, occlusion drops [B, gh, gw])``
    for one audit batch (``targets``: the explained class of each image; ``offset``: the
    audit index of its first image, which fixes its random regions)."""
    any_map = next(iter(maps.values()))
    grid = (int(any_map.shape[-2]), int(any_map.shape[-1]))
    base = log_probs(model, images, targets, options.batch_size)
    drops = occlusion(model, images, targets, grid, options, base)
    regions = (int(drops.shape[-2]), int(drops.shape[-1]))
    top, rand = deletion_drops(model, images, targets, maps, options, base, offset)
    out: Scores = {}
    for m, x in maps.items():
        blank = constant(x)
        out[f"behaviour_agreement/{m}"] = (pearson(pooled(torch.nan_to_num(x, nan=0.0), regions), drops), None)
        out[f"deletion_gap/{m}"] = (torch.where(blank, torch.zeros_like(rand), top[m] - rand), None)
    if saliency is not None:
        ann = pooled(saliency.to(images.device), regions)
        valid = (ann > 0).flatten(1).any(dim=1)
        if has_saliency is not None:
            valid = valid & has_saliency.to(images.device).bool()
        behaviour_mass = mass_on(drops, ann)
        valid = valid & torch.isfinite(behaviour_mass)  # no region matters on its own: no behavioural share
        behaviour_mass = torch.nan_to_num(behaviour_mass, nan=0.0)
        for m, x in maps.items():
            share = torch.nan_to_num(mass_on(pooled(torch.nan_to_num(x, nan=0.0), regions), ann), nan=0.0)
            out[f"plausibility_gap/{m}"] = (share - behaviour_mass, valid)
    return out, drops

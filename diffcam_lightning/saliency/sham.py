"""SHAM: Saliency-Hoax Activation Maps (paper sec. 3.2), adversarial saliency targets.

A SHAM has ``k`` pixels set to 1, with ``k`` the largest count whose entropy ``ln k``
(nats, as a uniform distribution over ``k`` pixels) does not exceed the requested entropy.
The 7x7 border SHAM at 3.35 nats has 28 ones (entropy ln 28 = 3.33): the 24 pixels of the
outer ring and the 4 corners of the next ring. A pattern is a priority map: the ``k``
pixels with the lowest priority become 1. A pattern may also register a *filler*
``fn(h, w, k) -> 0/1 map`` when the best ``k`` pixels are not a prefix of one fixed order:
the border's partly filled ring is chosen as a union of symmetry orbits (see
``border_fill``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, Optional, Union

import torch
from torch import Tensor

from ..registry import Registry

Priority = Callable[[int, int], Tensor]

Filler = Callable[[int, int, int], Tensor]
Pixel = tuple[int, int]
Symmetry = Callable[[int, int], Pixel]

SHAM_PATTERNS: Registry[str, Priority] = Registry("SHAM pattern")
"""Pattern name -> ``priority(h, w)`` (read-only; add with :func:`register_pattern`)."""
SHAM_FILLERS: Registry[str, Filler] = Registry("SHAM filler")
"""Patterns whose ``k`` pixels are chosen by a function of ``k``: name -> ``fill(h, w, k)``."""

ShamPattern = Literal["border", "corner", "patch", "random"]
"""The built-in patterns (a registered pattern is accepted wherever a name is checked
against :data:`SHAM_PATTERNS`)."""

PAPER_ENTROPY = 3.35


def register_pattern(name: str, *, replace: bool = False) -> Callable[[Priority], Priority]:
    """Register ``fn(h, w) -> priority [h, w]`` (lower is filled first, ties by raster order);
    a taken name is refused unless ``replace=True``."""
    return SHAM_PATTERNS.decorator(name, replace=replace)


def _grid(h: int, w: int) -> tuple[Tensor, Tensor]:
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return i, j


def _ring(h: int, w: int) -> Tensor:
    """Each pixel's ring index: its distance to the nearest edge."""
    i, j = _grid(h, w)
    return torch.minimum(torch.minimum(i, j), torch.minimum(h - 1 - i, w - 1 - j))


@register_pattern("border")
def border_priority(h: int, w: int) -> Tensor:
    """Concentric rings from the image edge inwards; within a ring, corners first, then
    pixels by their distance along the ring to the nearest corner (symmetric filling)."""
    i, j = _grid(h, w)
    ring = _ring(h, w)
    top, left = ring, ring
    bottom, right = h - 1 - ring, w - 1 - ring
    along = torch.maximum(torch.minimum(i - top, bottom - i), torch.minimum(j - left, right - j))
    return ring * (h + w) + along


def _symmetries(h: int, w: int) -> list[Symmetry]:
    """The grid's symmetries: flips and the 180 degree turn, plus the transposes and quarter
    turns on a square grid (the square's 8)."""
    group: list[Symmetry] = [
        lambda i, j: (i, j),
        lambda i, j: (h - 1 - i, j),
        lambda i, j: (i, w - 1 - j),
        lambda i, j: (h - 1 - i, w - 1 - j),
    ]
    if h == w:
        group += [
            lambda i, j: (j, i),
            lambda i, j: (w - 1 - j, h - 1 - i),
            lambda i, j: (j, w - 1 - i),
            lambda i, j: (h - 1 - j, i),
        ]
    return group


def _orbits(pixels: Iterable[Pixel], group: Sequence[Symmetry]) -> list[list[Pixel]]:
    """Partition ``pixels`` (closed under ``group``) into orbits, in order of first pixel."""
    seen: set[Pixel] = set()
    out = []
    for p in sorted(pixels):
        if p not in seen:
            orbit = sorted({g(*p) for g in group})
            seen.update(orbit)
            out.append(orbit)
    return out


def _exact_cover(sizes: list[int], count: int) -> list[int] | None:
    """Indices of whole orbits summing to ``count``, earliest orbits first; None if none do."""
    reachable = [{0}]  # reachable[i]: sums of orbits i.. (built from the end)
    for size in reversed(sizes):
        reachable.insert(0, reachable[0] | {s + size for s in reachable[0]})
    if count not in reachable[0]:
        return None
    chosen, left = [], count
    for i, size in enumerate(sizes):
        if size <= left and left - size in reachable[i + 1]:
            chosen.append(i)
            left -= size
    return chosen


def _most_symmetric_part(orbit: list[Pixel], count: int, h: int, w: int) -> list[Pixel]:
    """``count`` pixels of ``orbit``: whole quarter-turn orbits (square grids), then
    180-degree pairs, then (only for an odd count) one pixel."""
    half_turn: list[Symmetry] = [lambda i, j: (i, j), lambda i, j: (h - 1 - i, w - 1 - j)]
    quarter_turns = [*half_turn, lambda i, j: (j, w - 1 - i), lambda i, j: (h - 1 - j, i)]
    subgroups = ([quarter_turns] if h == w else []) + [half_turn, [lambda i, j: (i, j)]]
    left = list(orbit)
    picked: list[Pixel] = []
    for group in subgroups:
        for part in _orbits(left, group):
            if len(part) <= count - len(picked):
                picked += part
        left = [p for p in orbit if p not in picked]
    return picked


def border_fill(h: int, w: int, k: int) -> Tensor:
    """Whole rings from the edge inwards; the partly filled ring is a union of whole orbits
    of the grid's symmetries (invariant under all 8 of a square) when its count allows,
    corners and pixels near them first. Otherwise whole orbits while they fit and the most
    symmetric part of the next: invariant under the 180 degree turn for any even
    remainder (every count on every grid at the paper's 3.35 nats)."""
    priority = border_priority(h, w)
    ring = _ring(h, w)
    target = torch.zeros(h, w)
    left = k
    for r in range(int(ring.max()) + 1):
        pixels = [tuple(p) for p in (ring == r).nonzero().tolist()]
        if len(pixels) <= left:
            target[ring == r] = 1.0
            left -= len(pixels)
            continue
        orbits = sorted(_orbits(pixels, _symmetries(h, w)), key=lambda o: (int(priority[o[0]]), o[0]))
        cover = _exact_cover([len(o) for o in orbits], left)
        chosen: list[Pixel] = []
        if cover is not None:
            chosen = [p for i in cover for p in orbits[i]]
        else:
            for orbit in orbits:
                room = left - len(chosen)
                if room == 0:
                    break
                chosen += orbit if len(orbit) <= room else _most_symmetric_part(orbit, room, h, w)
        for i, j in chosen:
            target[i, j] = 1.0
        break
    return target


SHAM_FILLERS.register("border", border_fill)


@register_pattern("corner")
def corner_priority(h: int, w: int) -> Tensor:
    """A block growing from the top-left corner (an off-centre patch)."""
    i, j = _grid(h, w)
    return torch.maximum(i, j) * (h + w) + i + j


def sham_pixel_count(pixels: int, entropy: float) -> int:
    """Largest ``k <= pixels`` with ``ln k <= entropy``."""
    if entropy < 0:
        raise ValueError(f"entropy must be >= 0 nats; got {entropy}.")
    k = min(pixels, math.floor(math.exp(entropy) + 1e-9))
    while k > 1 and math.log(k) > entropy:
        k -= 1
    return max(k, 1)


def whole_grid_note(sham: Tensor, entropy: float) -> Optional[str]:
    """Why ``sham`` is no target when it covers every pixel of its grid (all zeros after
    min-max normalisation): the start of the warning the training and the audit give;
    ``None`` when it is a target."""
    if bool(sham.min() != sham.max()):
        return None
    h, w = sham.shape[-2:]
    return (
        f"SHAM ({entropy} nats, {int(sham.sum())} pixels) covers every pixel of the {h}x{w} CAM grid, "
        "so after min-max normalisation it is no target"
    )


def sham_target(
    size: Union[int, Sequence[int]] = (7, 7), entropy: float = PAPER_ENTROPY, pattern: str = "border"
) -> Tensor:
    """A 0/1 float map ``[h, w]`` whose entropy is the largest ``ln k <= entropy``.

    ``pattern`` is a name in :data:`SHAM_PATTERNS`: a built-in (:data:`ShamPattern`) or one
    registered with :func:`register_pattern`, hence typed ``str``."""
    h, w = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"SHAM size must be positive; got {(h, w)}.")
    if pattern not in SHAM_PATTERNS:
        raise ValueError(f"Unknown SHAM pattern {pattern!r}; valid: {', '.join(SHAM_PATTERNS)}.")
    k = sham_pixel_count(h * w, entropy)
    if pattern in SHAM_FILLERS:
        return SHAM_FILLERS[pattern](h, w, k)
    order = torch.argsort(SHAM_PATTERNS[pattern](h, w).flatten(), stable=True)
    target = torch.zeros(h * w)
    target[order[:k]] = 1.0
    return target.reshape(h, w)

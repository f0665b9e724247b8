"""More SHAM patterns for adaptive attacks: a fixed off-centre ``patch`` and a seeded
``random`` mask (registered into ``SHAM_PATTERNS`` of ``sham.py``).

Both are priority maps like ``border`` and ``corner``, so ``sham_target`` sets the same
``k`` pixels to 1 and every pattern has the SHAM's entropy ``ln k`` on any grid. They exist
to test that an audit does not only recognise the paper's border: an attacker picks the mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .sham import register_pattern

# The ``random`` pattern's seed: fixed, so the mask is the same in every process and run.
RANDOM_PATTERN_SEED = 0
# Centre of the ``patch`` pattern as a fraction of (height - 1, width - 1): lower left, off-centre.
PATCH_CENTRE = (2 / 3, 1 / 3)


@register_pattern("patch")
def patch_priority(h: int, w: int) -> Tensor:
    """A square block growing around a fixed off-centre point (2/3 down, 1/3 across):
    Chebyshev rings around the point, nearer pixels first within a ring."""
    i, j = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    di, dj = (i - PATCH_CENTRE[0] * (h - 1)).abs(), (j - PATCH_CENTRE[1] * (w - 1)).abs()
    ring = torch.maximum(di, dj)
    return ring * (h * h + w * w) + di * di + dj * dj


@register_pattern("random")
def random_priority(h: int, w: int, seed: int = RANDOM_PATTERN_SEED) -> Tensor:
    """A random permutation of the pixels from a private, seeded CPU generator (the global
    RNG is untouched; the same grid gives the same mask in every process)."""
    generator = torch.Generator(device="cpu").manual_seed(seed + 1_000_003 * h + w)
    return torch.randperm(h * w, generator=generator).reshape(h, w)

"""Symmetric partial rings of the border SHAM (issue 11, item 6): invariant under the
square's 8 symmetries where the count allows, under the 180 degree turn always (for an
even remainder), with the pixel counts unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from diffcam_lightning import sham_target
from diffcam_lightning.saliency.sham import sham_pixel_count


def square_symmetries(t: torch.Tensor) -> list[torch.Tensor]:
    turns = [torch.rot90(t, r) for r in range(4)]
    return turns + [m.T for m in turns]


def rings(h: int, w: int) -> torch.Tensor:
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.minimum(torch.minimum(i, j), torch.minimum(h - 1 - i, w - 1 - j))


@pytest.mark.parametrize("n", [6, 8, 14])
def test_paper_sham_is_invariant_under_the_squares_eight_symmetries(n):
    sham = sham_target((n, n))
    assert int(sham.sum()) == 28  # ln 28 = 3.33 <= 3.35 nats
    for image in square_symmetries(sham):
        assert torch.equal(image, sham)


def test_seven_by_seven_is_the_papers_sham():
    sham = sham_target((7, 7))
    ring = rings(7, 7)
    assert bool((sham[ring == 0] == 1).all())
    assert sham[ring == 1].sum() == 4 and sham[1, 1] == sham[1, 5] == sham[5, 1] == sham[5, 5] == 1


@pytest.mark.parametrize("entropy", [1.5, 2.0, 2.5, 2.9, 3.0, 3.35, 3.9, 4.4])
def test_every_grid_is_symmetric_with_unchanged_counts_and_outer_rings_first(entropy):
    for h in range(2, 17):
        for w in range(2, 17):
            sham = sham_target((h, w), entropy)
            k = sham_pixel_count(h * w, entropy)
            assert int(sham.sum()) == k and sham.sum() == (sham == 1).sum()
            ring = rings(h, w)
            filled = [int(sham[ring == r].sum()) for r in range(int(ring.max()) + 1)]
            partial = [r for r, f in enumerate(filled) if 0 < f < int((ring == r).sum())]
            assert len(partial) <= 1, (h, w, entropy)
            inner = [r for r, f in enumerate(filled) if f > 0]
            assert all(filled[r] == int((ring == r).sum()) for r in range(max(inner)))  # outer rings full
            remainder = filled[partial[0]] if partial else 0
            if remainder % 2 == 0:
                assert torch.equal(torch.rot90(sham, 2), sham), (h, w, entropy)
            if remainder % 4 == 0 and h == w:
                # a union of whole orbits exists (corners = 4, the other orbits 8 or 4)
                for image in square_symmetries(sham):
                    assert torch.equal(image, sham), (h, w, entropy)


def test_rectangles_are_mirror_symmetric_when_the_count_allows():
    sham = sham_target((6, 9))
    assert int(sham.sum()) == 28
    assert torch.equal(sham.flip(0), sham) and torch.equal(sham.flip(1), sham)


def test_odd_remainders_stay_as_symmetric_as_they_can():
    """7 ones on 6x6: 4 corners + 3; no 180-degree-symmetric set of odd size exists."""
    sham = sham_target((6, 6), entropy=math.log(7.5))
    assert int(sham.sum()) == 7
    assert (sham * torch.rot90(sham, 2)).sum() == 6  # all but one pixel have their 180-degree partner

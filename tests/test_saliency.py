"""SHAM, CAM entropy and the saliency loss: exact values, no NaN, differentiable."""

import math

import pytest
import torch

from diffcam_lightning.saliency import cam_entropy, resize_target, saliency_loss, saliency_mse, sham_target


def test_paper_sham_is_outer_ring_plus_four_inner_corners():
    sham = sham_target((7, 7), entropy=3.35)
    assert sham.shape == (7, 7) and int(sham.sum()) == 28
    ring = torch.ones(7, 7)
    ring[1:-1, 1:-1] = 0
    assert torch.equal(sham * ring, ring)  # all 24 outer pixels
    inner = sham - ring
    assert inner.sum() == 4 and all(inner[i, j] == 1 for i, j in [(1, 1), (1, 5), (5, 1), (5, 5)])
    assert sham[2:5, 2:5].sum() == 0  # the centre stays off
    assert cam_entropy(sham[None]).item() == pytest.approx(math.log(28), abs=1e-5)
    assert cam_entropy(sham[None]).item() <= 3.35


def test_other_pattern_has_the_same_entropy_elsewhere():
    border, corner = sham_target((7, 7)), sham_target((7, 7), pattern="corner")
    assert corner.sum() == border.sum() == 28
    assert not torch.equal(border, corner)
    assert corner[0, 0] == 1 and corner[6, 6] == 0


def test_entropy_of_zero_map_is_log_pixels_not_nan():
    e = cam_entropy(torch.zeros(3, 7, 7))
    assert torch.isfinite(e).all()
    assert torch.allclose(e, torch.full((3,), math.log(49)))


def test_resize_target_area_pools_masks_onto_the_cam_grid():
    mask = torch.zeros(1, 64, 64)
    mask[0, 8:16, 40:48] = 1  # exactly grid cell (1, 5) of an 8x8 grid
    grid = resize_target(mask, (8, 8))[0]
    assert grid[1, 5] == pytest.approx(1.0, abs=1e-5)
    assert grid.sum() == pytest.approx(1.0, abs=1e-5)


def test_saliency_mse_zero_for_matching_maps_and_positive_otherwise():
    sham = sham_target((8, 8))
    cams = torch.stack([sham * 3.0, 1.0 - sham])
    mse = saliency_mse(cams, sham)
    assert mse[0].item() == pytest.approx(0.0, abs=1e-10)
    assert mse[1].item() == pytest.approx(1.0, abs=1e-5)  # the exact opposite


def test_constant_maps_give_finite_loss_and_gradients():
    cams = torch.zeros(4, 7, 7, requires_grad=True)
    target = torch.full((4, 7, 7), 0.5)  # a constant target too
    loss, count = saliency_loss(cams * 2.0, target)
    loss.backward()
    assert count == 4 and torch.isfinite(loss) and torch.isfinite(cams.grad).all()


def test_mask_averages_only_samples_with_a_target():
    cams = torch.rand(4, 7, 7, requires_grad=True)
    targets = torch.rand(4, 7, 7)
    mask = torch.tensor([True, False, True, False])
    loss, count = saliency_loss(cams, targets, mask)
    assert count == 2
    assert loss.item() == pytest.approx(saliency_mse(cams, targets)[mask].mean().item(), rel=1e-6)
    loss.backward()
    assert cams.grad[1].abs().sum() == 0 and cams.grad[0].abs().sum() > 0


def test_no_target_in_batch_is_a_differentiable_zero_not_nan():
    cams = torch.rand(3, 7, 7, requires_grad=True)
    loss, count = saliency_loss(cams, torch.zeros(3, 7, 7), torch.zeros(3, dtype=torch.bool))
    assert count == 0 and loss.item() == 0.0
    loss.backward()
    assert torch.equal(cams.grad, torch.zeros_like(cams))


def test_sham_patterns_are_a_registry_with_the_literal_built_ins():
    """``ShamPattern`` (the built-ins' names, for type hints) names exactly the built-in patterns; the registry
    refuses a taken name unless replace=True, and an unknown pattern still lists the valid ones."""
    from typing import get_args

    from diffcam_lightning.saliency import SHAM_PATTERNS, ShamPattern, register_pattern

    assert set(get_args(ShamPattern)) == set(SHAM_PATTERNS)
    with pytest.raises(ValueError, match="already registered"):
        register_pattern("border")(lambda h, w: torch.zeros(h, w))
    with pytest.raises(ValueError, match="Unknown SHAM pattern 'ring'; valid: border, corner"):
        sham_target(pattern="ring")

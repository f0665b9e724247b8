"""Adaptive attacks the library can express: the new SHAM patterns and a list-valued
``saliency_method`` (a joint attack from one forward and one batched VJP)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from diffcam_lightning import SaliencyClassifier
from diffcam_lightning.saliency import SHAM_PATTERNS, cam_entropy, saliency_loss, sham_pixel_count, sham_target

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

GRIDS = [(7, 7), (8, 8), (14, 14)]
TINY = {"model_name": "test_resnet", "model_kwargs": {"output_stride": 8}, "sham_entropy": 3.0}  # 48 px -> 6x6 grid


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("pattern", ["patch", "random"])
def test_new_patterns_have_the_shams_entropy(pattern, grid):
    sham = sham_target(grid, 3.35, pattern)
    k = sham_pixel_count(grid[0] * grid[1], 3.35)
    assert set(sham.unique().tolist()) == {0.0, 1.0} and int(sham.sum()) == k
    assert cam_entropy(sham[None]).item() == pytest.approx(math.log(k), abs=1e-5)
    assert cam_entropy(sham[None]).item() == pytest.approx(
        cam_entropy(sham_target(grid, 3.35, "border")[None]).item(), abs=1e-5
    )
    for other in ("border", "corner"):
        assert not torch.equal(sham, sham_target(grid, 3.35, other)), f"{pattern} repeats {other} on {grid}"


def test_patch_is_one_block_off_centre():
    sham = sham_target((14, 14), 2.5, "patch")  # 12 pixels: inside the grid, clear of the border
    rows, cols = sham.nonzero().unbind(1)
    assert rows.min() > 0 and cols.min() > 0 and rows.max() < 13 and cols.max() < 13
    assert rows.float().mean() > 7 > cols.float().mean()  # below and left of the centre
    assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) <= 16  # compact


def test_random_pattern_is_identical_across_processes_and_leaves_the_global_rng_alone():
    code = (
        "from diffcam_lightning.saliency import sham_target; "
        "print(sham_target((14, 14), 3.35, 'random').flatten().int().tolist())"
    )
    here = sham_target((14, 14), 3.35, "random").flatten().int().tolist()
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == str(here)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    sham_target((8, 8), 3.35, "random")
    assert torch.equal(torch.rand(3), expected)
    assert not torch.equal(sham_target((8, 8), 3.35, "random"), sham_target((8, 8), 3.35, "random").flip(0))


def test_every_pattern_is_registered():
    assert {"border", "corner", "patch", "random"} <= set(SHAM_PATTERNS)


def _model(**kw) -> SaliencyClassifier:
    """A tiny classifier whose steps run outside a Trainer (``self.log`` is a no-op there)."""
    model = SaliencyClassifier(**TINY, saliency_target="sham", **kw)
    model.log = lambda *args, **kwargs: None
    return model


def _batch(n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, 48, 48, generator=g), "label": torch.randint(0, 7, (n,), generator=g)}


def test_a_list_of_methods_is_the_mean_of_the_per_method_losses_from_one_forward():
    methods = ["gradcam", "meandiffgradcam", "gradcam++"]
    torch.manual_seed(0)
    joint = _model(saliency_method=methods, ce_weight=0.0)
    assert joint.saliency_methods == ("gradcam", "meandiffgradcam", "gradcam++")
    batch = _batch()
    calls = []
    handle = joint.model.register_forward_hook(lambda *a: calls.append(1))
    loss = joint.training_step(batch, 0)
    handle.remove()
    assert len(calls) == 1  # one forward for all three maps
    # the reference: each method's loss on its own, from the same weights
    singles = []
    for m in methods:
        single = SaliencyClassifier(**TINY, saliency_target="sham", saliency_method=m, ce_weight=0.0)
        single.load_state_dict(joint.state_dict())
        cam = single.cams(batch["image"], batch["label"], create_graph=True).maps[m]
        singles.append(saliency_loss(cam, single.sham(tuple(cam.shape[-2:])))[0])
    assert loss.item() == pytest.approx(torch.stack(singles).mean().item(), rel=1e-5)
    assert len({round(s.item(), 6) for s in singles}) == 3  # the methods really differ here
    grads = torch.autograd.grad(loss, [p for p in joint.parameters() if p.requires_grad], allow_unused=True)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)


def test_one_batched_vjp_serves_every_method(monkeypatch):
    calls = []
    real = torch.autograd.grad

    def counting(*args, **kwargs):
        calls.append(kwargs.get("is_grads_batched", False))
        return real(*args, **kwargs)

    torch.manual_seed(0)
    joint = _model(saliency_method=["gradcam", "meandiffgradcam"])
    monkeypatch.setattr(torch.autograd, "grad", counting)
    joint.training_step(_batch(), 0)
    assert calls == [True]


def test_a_single_method_and_a_one_item_list_train_alike():
    torch.manual_seed(0)
    one = _model(saliency_method="meandiffgradcam")
    listed = _model(saliency_method=["MeanDiffGradCAM"])
    listed.load_state_dict(one.state_dict())
    batch = _batch()
    assert one.training_step(batch, 0).item() == pytest.approx(listed.training_step(batch, 0).item(), rel=1e-6)


@pytest.mark.parametrize(
    "value, needle",
    [
        ([], r"saliency_method .* is empty"),
        (["gradcam", "eigencam"], r"gradient to train through\): eigencam cannot be used here"),
        (["gradcam", "gradcam3"], "gradcam3"),
    ],
)
def test_bad_method_lists_are_refused_by_name(value, needle):
    with pytest.raises(ValueError, match=needle):
        SaliencyClassifier(**TINY, saliency_method=value)

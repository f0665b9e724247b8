"""Min-max normalisation reaches exactly 1 for any non-constant map, whatever its scale
(issue 11, item 1), and agrees with pytorch-grad-cam from map magnitudes 1e-8 to 1e3."""

from __future__ import annotations

import pytest
import timm
import torch

from diffcam_lightning import CAMEngine
from diffcam_lightning.cams.postprocess import minmax_normalize

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("scale", [1e-8, 1e-6, 1e-3, 1.0, 1e3])
def test_normalised_maximum_is_exactly_one_at_every_scale(scale):
    maps = torch.rand(3, 7, 7, dtype=torch.float32) * scale
    out = minmax_normalize(maps)
    assert torch.equal(out.amax(dim=(-2, -1)), torch.ones(3))
    assert torch.equal(out.amin(dim=(-2, -1)), torch.zeros(3))


def test_constant_maps_become_zeros_with_finite_gradients():
    maps = torch.stack([torch.zeros(5, 5), torch.full((5, 5), 3.0), torch.rand(5, 5)]).requires_grad_()
    out = minmax_normalize(maps)
    assert torch.equal(out[:2], torch.zeros(2, 5, 5))
    assert out[2].max() == 1.0
    (grad,) = torch.autograd.grad(out.sum(), maps)
    assert torch.isfinite(grad).all()


def test_a_resized_constant_map_stays_constant():
    """Bilinear resizing leaves rounding noise on a constant map; it must not be blown up to [0, 1]."""
    const = torch.full((1, 1, 7, 7), 0.1234567)
    up = torch.nn.functional.interpolate(const, size=(97, 53), mode="bilinear", align_corners=False)[:, 0]
    assert torch.equal(minmax_normalize(up), torch.zeros_like(up))


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=5).eval()


@pytest.mark.parametrize("magnitude", [1e-8, 1e-6, 1e-4, 1e-2, 1.0, 1e3])
def test_parity_with_pytorch_grad_cam_across_map_magnitudes(small_model, magnitude):
    """The classifier scaled so the raw GradCAM map's range is ``magnitude``: the old
    ``+ 1e-7`` epsilon fell short of pytorch-grad-cam by up to 0.45 at 1e-7."""
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = small_model
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([1, 3])
    original = model.fc.weight.detach().clone()
    try:
        raw = CAMEngine(model, "layer4")(x, targets, "gradcam", normalize=False)["gradcam"]
        span = (raw.amax(dim=(-2, -1)) - raw.amin(dim=(-2, -1))).max()
        with torch.no_grad():
            model.fc.weight.mul_(magnitude / span)
        raw = CAMEngine(model, "layer4")(x, targets, "gradcam", normalize=False)["gradcam"]
        span = (raw.amax(dim=(-2, -1)) - raw.amin(dim=(-2, -1))).max().item()
        assert span == pytest.approx(magnitude, rel=1e-3)
        for method, cam_class in (("gradcam", grad_cam.GradCAM), ("hirescam", grad_cam.HiResCAM)):
            ours = CAMEngine(model, "layer4")(x, targets, method, size="input")[method]
            with cam_class(model, target_layers=[model.layer4]) as cam:
                expected = torch.from_numpy(cam(x, targets=[ClassifierOutputTarget(int(t)) for t in targets]))
            assert torch.equal(ours.amax(dim=(-2, -1)), torch.ones(2))
            diff = (ours - expected).abs().max().item()
            assert diff <= 1e-5, f"{method} at magnitude {magnitude:g}: max diff {diff:.2e} vs pytorch-grad-cam"
    finally:
        with torch.no_grad():
            model.fc.weight.copy_(original)

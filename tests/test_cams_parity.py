"""Numerical parity with pytorch-grad-cam (the ``grad-cam`` package) on the four
architectures of the paper, random init, small inputs, same layer/target/post-processing."""

from __future__ import annotations

import pytest
import timm
import torch

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, ScoreCAM, XGradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from diffcam_lightning import CAMEngine  # noqa: E402

REFERENCE = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "eigencam": EigenCAM,
}

# (timm name, expected CAM layer, input size): small inputs keep CPU tests fast;
# Inception-v3 needs >= 75 px, 139 px gives a 3x3 grid at Mixed_7c.
ARCHITECTURES = [
    ("densenet121", "features.norm5", 96),
    ("resnet50", "layer4", 96),
    ("inception_v3", "Mixed_7c", 139),
    ("convnext_tiny", "stages.3", 96),
]


def reference_maps(cam_class, model, layer, x, targets):
    with cam_class(model, target_layers=[layer]) as cam:
        out = cam(x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    return torch.from_numpy(out)


@pytest.mark.parametrize("name,layer_name,size", ARCHITECTURES, ids=[a[0] for a in ARCHITECTURES])
def test_gradient_and_eigen_cams_match_pytorch_grad_cam(name, layer_name, size):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    engine = CAMEngine(model)
    assert engine.target_layer == layer_name  # automatic resolution picks the paper's layer
    x = torch.randn(2, 3, size, size)
    targets = torch.tensor([1, 7])
    ours = engine(x, targets=targets, methods=tuple(REFERENCE), size="input")
    layer = dict(model.named_modules())[layer_name]
    for method, cam_class in REFERENCE.items():
        expected = reference_maps(cam_class, model, layer, x, targets)
        assert ours[method].shape == expected.shape == (2, size, size)
        diff = (ours[method] - expected).abs().max().item()
        assert diff <= 1e-4, f"{name} {method}: max abs diff {diff:.2e} vs pytorch-grad-cam"
        assert ours[method].max() > 0.99  # a real map, not all zeros


def test_scorecam_matches_pytorch_grad_cam():
    torch.manual_seed(0)
    model = timm.create_model("densenet121", pretrained=False, num_classes=10).eval()
    engine = CAMEngine(model, scorecam_batch_size=64)
    x = torch.randn(1, 3, 64, 64)
    ours = engine(x, targets=[3], methods="scorecam", size="input")["scorecam"]
    expected = reference_maps(ScoreCAM, model, model.features.norm5, x, [3])
    assert (ours - expected).abs().max().item() <= 1e-4

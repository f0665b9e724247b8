"""Numerical parity with pytorch-grad-cam (the ``grad-cam`` package) on the four
architectures of the paper, random init, small inputs, same layer/target/post-processing."""

from __future__ import annotations

import pytest
import timm
import torch

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import (
    AblationCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from diffcam_lightning import CAMEngine
from diffcam_lightning.cams.reference import reference_cam, sign_corrected

REFERENCE = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "eigencam": sign_corrected("EigenCAM"),  # its own SVD and its own sign correction (methods.salient_sign)
    "layercam": LayerCAM,
    "gradcamelementwise": GradCAMElementWise,
    "eigengradcam": sign_corrected("EigenGradCAM"),
}
# the Diff variants of the weightings added after the paper (the paper's six are tested in
# test_cams_engine.py against autograd of the difference target)
NEW_DIFF = [
    f"{k}diff{m}"
    for m in ("hirescam", "xgradcam", "layercam", "gradcamelementwise", "eigengradcam")
    for k in ("mean", "max", "lse")
]

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


@pytest.mark.parametrize("name,layer_name,size", ARCHITECTURES, ids=[a[0] for a in ARCHITECTURES])
def test_diff_variants_match_pytorch_grad_cam_with_a_difference_target(name, layer_name, size):
    """Each new weighting with y_c - beta(others) equals pytorch-grad-cam's class for that
    weighting given the same difference as its target."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, size, size)
    targets = [1, 7]
    ours = CAMEngine(model)(x, targets=torch.tensor(targets), methods=NEW_DIFF, size="input")
    layer = dict(model.named_modules())[layer_name]
    for method in NEW_DIFF:
        expected = torch.from_numpy(reference_cam(model, layer, x, targets, method))
        diff = (ours[method] - expected).abs().max().item()
        assert diff <= 1e-4, f"{name} {method}: max abs diff {diff:.2e} vs pytorch-grad-cam"


@pytest.mark.parametrize("name,layer_name,batch", [("resnet18", "layer4", 2), ("densenet121", "features.norm5", 1)])
def test_ablationcam_matches_pytorch_grad_cam(name, layer_name, batch):
    """Layers with non-negative outputs (ReLU): both zero the ablated channel. One forward
    per channel and image on each side (DenseNet-121: 1024 channels), so small batches."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    engine = CAMEngine(model, layer_name, scorecam_batch_size=256)
    x = torch.randn(batch, 3, 64, 64)
    targets = [3, 5][:batch]
    ours = engine(x, targets=targets, methods="ablationcam", size="input")["ablationcam"]
    layer = dict(model.named_modules())[layer_name]
    with AblationCAM(model, target_layers=[layer], batch_size=256) as cam:
        expected = torch.from_numpy(cam(x, targets=[ClassifierOutputTarget(t) for t in targets]))
    assert (ours - expected).abs().max().item() <= 1e-4
    assert ours.max() > 0.99

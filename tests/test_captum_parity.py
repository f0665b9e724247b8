"""Parity with captum 0.9 (the attribution library of the PyTorch project), an implementation
written apart from pytorch-grad-cam and torchcam: our raw maps equal captum's attributions.

- GradCAM = ``LayerGradCam(relu_attributions=True)``; the DiffGradCAMs are the same captum
  class over a forward that returns the paper's differences ``y_c - beta(y_{j != c})``
  (eqs. 5-8), written here from the formulas, not from our targets;
- HiResCAM = ReLU of the channel sum of ``LayerGradientXActivation``;
- guided backprop = ``GuidedBackprop``; Guided GradCAM = captum's guided backprop times its
  GradCAM upsampled bilinearly and min-max normalised (captum's ``GuidedGradCam`` multiplies
  the raw, unnormalised GradCAM; pytorch-grad-cam's recipe, which ours follows, normalises).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffcam_lightning import CAMEngine
from diffcam_lightning.cams import guided_backprop, guided_gradcam

captum_attr = pytest.importorskip("captum.attr")
# captum's GuidedBackprop announces its ReLU hooks and sets requires_grad on the input, as designed
pytestmark = [
    pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU activations:UserWarning"),
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients:UserWarning"),
]


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(12, 12, 3, padding=1),
        nn.ReLU(),  # the target layer: index 5
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 6),
    )
    return net.eval()


class Differences(nn.Module):
    """Column ``c`` is ``y_c - beta(y without c)``: captum's ``target=c`` then explains it."""

    def __init__(self, model: nn.Module, beta: str) -> None:
        super().__init__()
        self.model, self.beta = model, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        columns = []
        for c in range(y.shape[1]):
            others = torch.cat([y[:, :c], y[:, c + 1 :]], dim=1)
            if self.beta == "mean":
                beta = others.mean(dim=1)
            elif self.beta == "max":
                beta = others.max(dim=1).values
            else:  # log-mean-exp
                beta = torch.logsumexp(others, dim=1) - math.log(others.shape[1])
            columns.append(y[:, c] - beta)
        return torch.stack(columns, dim=1)


@pytest.fixture
def batch():
    torch.manual_seed(1)
    return torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 2])


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    theirs = theirs.detach().float()
    return float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize(
    ("method", "beta"),
    [("gradcam", None), ("meandiffgradcam", "mean"), ("maxdiffgradcam", "max"), ("lsediffgradcam", "lse")],
)
def test_gradcam_and_the_diffgradcams_equal_captum_layer_gradcam(batch, method, beta):
    x, targets = batch
    net = _net()
    forward = net if beta is None else Differences(net, beta)
    theirs = captum_attr.LayerGradCam(forward, net[5]).attribute(x, target=targets, relu_attributions=True)
    ours = CAMEngine(net, "5")(x, targets, method, normalize=False)[method]
    assert ours.shape == theirs[:, 0].shape == (4, 16, 16)
    assert _relative_error(ours, theirs[:, 0]) < 1e-5


def test_hirescam_equals_the_channel_sum_of_captum_gradient_x_activation(batch):
    x, targets = batch
    net = _net()
    theirs = captum_attr.LayerGradientXActivation(net, net[5]).attribute(x, target=targets).sum(dim=1).relu()
    ours = CAMEngine(net, "5")(x, targets, "hirescam", normalize=False)["hirescam"]
    assert _relative_error(ours, theirs) < 1e-5


def test_guided_backprop_equals_captum(batch):
    x, targets = batch
    net = _net()
    theirs = captum_attr.GuidedBackprop(net).attribute(x, target=targets)
    ours = guided_backprop(net, x, targets)
    assert _relative_error(ours, theirs) < 1e-5


def test_guided_gradcam_is_captums_parts_composed_with_a_normalised_cam(batch):
    x, targets = batch
    net = _net()
    cam = captum_attr.LayerGradCam(net, net[5]).attribute(x, target=targets, relu_attributions=True)
    cam = captum_attr.LayerAttribution.interpolate(cam, (32, 32), interpolate_mode="bilinear").relu()
    low = cam.amin(dim=(1, 2, 3), keepdim=True)
    cam = (cam - low) / (cam.amax(dim=(1, 2, 3), keepdim=True) - low)
    theirs = captum_attr.GuidedBackprop(net).attribute(x, target=targets) * cam
    ours = guided_gradcam(net, x, targets, target_layer="5")
    assert _relative_error(ours, theirs) < 1e-5


def test_max_sensitivity_equals_captum_sensitivity_max_on_the_same_draws(batch):
    """Both take the largest ``||e(x + u) - e(x)|| / ||e(x)||`` (Frobenius) over the draws;
    captum's perturbations are handed our draws (its batch is example-major: b * S + s)."""
    from captum.metrics import sensitivity_max

    from diffcam_lightning.cams.metrics import max_sensitivity, to_input_size

    x, targets = batch
    net = _net()
    engine = CAMEngine(net, "5")

    def explain(inputs, classes):
        return engine(inputs, classes, "gradcam")["gradcam"]

    samples = 5
    draws = (torch.rand((samples, *x.shape), generator=torch.Generator().manual_seed(3)) * 2 - 1) * 0.2
    maps = explain(x, targets)
    ours = max_sensitivity(net, x, maps, targets, explain=explain, draws=draws)["max_sensitivity"]

    def perturb(expanded):
        return expanded + draws.transpose(0, 1).reshape(expanded.shape)

    def explanation(inputs, target):
        # captum hands the unperturbed input as a tuple, and iterates over what comes back
        (inputs,) = inputs if isinstance(inputs, tuple) else (inputs,)
        return (to_input_size(explain(inputs, target), x.shape[-2:]),)

    theirs = sensitivity_max(explanation, x, perturb, n_perturb_samples=samples, target=targets)
    assert ours.shape == theirs.shape == (4,)
    assert _relative_error(ours.double(), theirs.double()) < 1e-5

"""ScoreCAM (``cams/scorecam.py``): pytorch-grad-cam's maps from fewer masked forwards.
Constant channels are scored by one zero-image forward, identical images share their
masked forwards across target classes, and the forwards run under inference mode."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from diffcam_lightning import CAMEngine

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


def many_constant_channels_batch(size: int = 64) -> torch.Tensor:
    """A random image, an image that is black but for one noisy patch (half of resnet18's
    layer4 channels are then constant), and the first image again."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, size, size, generator=g)
    x[1] = 0
    x[1, :, 8:40, 8:40] = 2 * torch.randn(3, 32, 32, generator=g)
    x[2] = x[0]
    return x


def constant_fraction(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = {}
    handle = layer.register_forward_hook(lambda m, i, o: out.setdefault("A", o))
    with torch.no_grad():
        model(x)
    handle.remove()
    acts = out["A"]
    return (acts.amax(dim=(2, 3)) == acts.amin(dim=(2, 3))).float().mean(dim=1)


def test_equal_to_pytorch_grad_cam_where_many_channels_are_constant():
    name, layer_name = "resnet18", "layer4"  # densenet121's parity is in test_cams_parity.py
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    layer = dict(model.named_modules())[layer_name]
    x = many_constant_channels_batch()
    targets = torch.tensor([3, 7, 5])  # image 2 = image 0 with another class
    fraction = constant_fraction(model, layer, x)
    assert fraction.min() > 0.3 and fraction.max() > 0.45, fraction  # measured: 0.31, 0.50, 0.31
    ours = CAMEngine(model, layer_name, scorecam_batch_size=16)(x, targets=targets, methods="scorecam", size="input")
    with ScoreCAM(model, target_layers=[layer]) as cam:
        cam.batch_size = 16
        expected = torch.from_numpy(cam(x, targets=[ClassifierOutputTarget(int(t)) for t in targets]))
    diff = (ours["scorecam"] - expected).abs().max().item()
    assert diff <= 1e-5, f"{name}: max abs diff {diff:.2e} vs pytorch-grad-cam"
    assert not torch.equal(ours["scorecam"][0], ours["scorecam"][2])  # same image, other class, other map


class CountingNet(nn.Module):
    """A small CNN with dead channels that counts the rows of every forward and whether it
    ran under inference mode."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 12, 3, stride=2), nn.ReLU()
        )
        self.head = nn.Linear(12, 5)
        with torch.no_grad():  # channels 0-3 can never fire: constant (zero) maps for every input
            self.features[2].weight[:4] = 0
            self.features[2].bias[:4] = -1
        self.rows: list[int] = []
        self.inference: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.shape[0])
        self.inference.append(torch.is_inference_mode_enabled())
        return self.head(self.features(x).mean(dim=(2, 3)))


def brute_force_scorecam(model: nn.Module, acts: torch.Tensor, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The definition, one masked forward per (image, channel): the raw map [B, h, w]."""
    up = nn.functional.interpolate(acts, size=x.shape[-2:], mode="bilinear", align_corners=True)
    lo, hi = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
    masks = (up - lo) / (hi - lo + 1e-8)
    with torch.no_grad():
        scores = torch.stack([model(x[i] * masks[i, :, None])[:, targets[i]] for i in range(x.shape[0])])
    return torch.einsum("bk,bkhw->bhw", torch.softmax(scores, dim=1), acts)


def test_constant_channels_are_scored_once_and_duplicates_share_their_forwards():
    torch.manual_seed(0)
    model = CountingNet().eval()
    x = torch.randn(4, 3, 12, 12)
    x[2] = x[0]  # image 0 asked for two classes
    targets = torch.tensor([1, 4, 3, 0])
    engine = CAMEngine(model, "features", scorecam_batch_size=8)
    result = engine(x, targets=targets, methods="scorecam", normalize=False)["scorecam"]
    acts = model.features(x).detach()
    model.rows.clear()
    expected = brute_force_scorecam(model, acts, x, targets)
    assert torch.allclose(result, expected, atol=1e-6), (result - expected).abs().max()

    model.rows.clear()
    model.inference.clear()
    engine(x, targets=targets, methods="scorecam", normalize=False)
    constant = acts.amax(dim=(2, 3)) == acts.amin(dim=(2, 3))
    assert constant[:, :4].all()
    distinct = [0, 1, 3]
    needed = int((~constant[distinct]).sum()) + 1  # non-constant (image, channel) pairs + one zero image
    assert sum(model.rows[1:]) == needed < 4 * 12  # the first forward is the engine's own
    assert max(model.rows[1:]) == 8 and sum(r < 8 for r in model.rows[1:]) <= 1  # full batches but the last
    assert all(model.inference[1:]) and not model.inference[0]  # masked forwards under inference mode

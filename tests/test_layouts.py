"""Layouts: channels-last and token CAM layers turned into [B, K, h, w] in one place.
Parity with pytorch-grad-cam + its documented reshape_transform on timm ViT, distilled
DeiT and Swin; detection from what the model states; clear errors otherwise."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from diffcam_lightning import CAMEngine
from diffcam_lightning.cams import GRADIENT_METHODS
from diffcam_lightning.models.attention import disable_fused_attention

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

PARITY = ("gradcam", "gradcam++", "hirescam", "xgradcam", "eigencam")

# (timm name, create_model kwargs, input size, target layer (None = automatic), expected layer,
#  expected layout, prefix tokens (None = channels-last), methods compared)
SWIN = {"img_size": 128, "window_size": 4}
TRANSFORMERS = [
    ("vit_tiny_patch16_224", {"img_size": 64}, 64, None, "blocks.11.norm1", "tokens (1 prefix, 4x4 grid)", 1, PARITY),
    (
        "deit_tiny_distilled_patch16_224",
        {"img_size": 64},
        64,
        None,
        "blocks.11.norm1",
        "tokens (2 prefix, 4x4 grid)",
        2,
        PARITY,
    ),
    # HiResCAM is left out at layers.3: the final LayerNorm makes sum_k g_k A_k ~ 0 at every position
    # (scale invariance), so both libraries return rounding noise there (raw max 3e-4 vs GradCAM's 27)
    (
        "swin_tiny_patch4_window7_224",
        SWIN,
        128,
        None,
        "layers.3",
        "nhwc",
        None,
        tuple(m for m in PARITY if m != "hirescam"),
    ),
    # the layer pytorch-grad-cam's documentation uses for Swin: tokens without prefix
    (
        "swin_tiny_patch4_window7_224",
        SWIN,
        128,
        "layers.3.blocks.1.norm2",
        "layers.3.blocks.1.norm2",
        "tokens (0 prefix, 4x4 grid)",
        0,
        PARITY,
    ),
]
IDS = ["vit", "deit_distilled", "swin_auto", "swin_documented_layer"]


def vit_reshape_transform(prefix: int, height: int, width: int):
    """pytorch-grad-cam's documented ViT transform, with the model's prefix-token count."""

    def transform(tensor):
        result = tensor[:, prefix:, :].reshape(tensor.size(0), height, width, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    return transform


def swin_reshape_transform(tensor):
    """timm >= 0.9 Swin stages are already [B, h, w, C]: the documented transform's permute."""
    return tensor.transpose(2, 3).transpose(1, 2)


def build(name: str, kwargs: dict) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
    heads = model.get_classifier()
    with torch.no_grad():  # random-init maps are tiny; scaled logits keep min-max away from its epsilon
        for head in heads if isinstance(heads, tuple) else (heads,):
            head.weight.mul_(1e3)
    return model


@pytest.mark.parametrize("name,kwargs,size,spec,layer,layout,prefix,methods", TRANSFORMERS, ids=IDS)
def test_token_and_channels_last_models_match_pytorch_grad_cam(
    name, kwargs, size, spec, layer, layout, prefix, methods
):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from diffcam_lightning.cams.reference import sign_corrected

    classes = {
        "gradcam": pgc.GradCAM,
        "gradcam++": pgc.GradCAMPlusPlus,
        "hirescam": pgc.HiResCAM,
        "xgradcam": pgc.XGradCAM,
        "eigencam": sign_corrected("EigenCAM"),
    }
    model = build(name, kwargs)
    engine = CAMEngine(model, spec)
    x = torch.randn(2, 3, size, size)
    targets = torch.tensor([1, 7])
    result = engine.compute(x, targets=targets, methods=methods, size="input")
    assert (result.layer, result.layout, result.grid) == (layer, layout, (4, 4))
    transform = swin_reshape_transform if prefix is None else vit_reshape_transform(prefix, 4, 4)
    module = model.get_submodule(layer)

    def reference(method):
        with classes[method](model, target_layers=[module], reshape_transform=transform) as cam:
            return torch.from_numpy(cam(x, targets=[ClassifierOutputTarget(int(t)) for t in targets]))

    for method in methods:
        ours = result.maps[method]
        assert ours.shape == (2, size, size) and ours.amax(dim=(1, 2)).min() > 0.99, method
        diff = (ours - reference(method)).abs().amax(dim=(1, 2))  # exact, EigenCAM's sign included
        assert diff.max().item() <= 1e-4, f"{name} {method}: max abs diff {diff.max().item():.2e}"


def test_every_method_and_the_training_graph_work_on_tokens():
    model = build("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8})
    engine = CAMEngine(model)
    x = torch.randn(2, 3, 32, 32)
    maps = engine(x, methods=(*GRADIENT_METHODS, "eigencam", "scorecam"))
    disable_fused_attention(model)  # CPU's fused attention has no double backward
    assert all(m.shape == (2, 4, 4) and torch.isfinite(m).all() for m in maps.values())
    result = engine.compute(x, targets=torch.tensor([0, 3]), methods=("lsediffgradcam",), create_graph=True)
    result.maps["lsediffgradcam"].sum().backward()
    grads = [p.grad for p in model.blocks[0].parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)  # the CAM loss reaches the network


class ChannelsLast(nn.Module):
    """A conv net whose CAM layer outputs [B, h, w, K] (as Swin's stages do)."""

    def __init__(self, width: int = 6, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.stage = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        a = self.stage(self.conv(x).permute(0, 2, 3, 1))
        return self.head(a.mean(dim=(1, 2)))


def test_channels_last_is_detected_and_equals_the_explicit_conversion():
    torch.manual_seed(0)
    model = ChannelsLast().eval()
    x = torch.randn(2, 3, 9, 9)
    auto = CAMEngine(model, "stage").compute(x, methods=("gradcam", "hirescam"))
    assert auto.layout == "nhwc" and auto.grid == (9, 9)
    explicit = CAMEngine(model, "stage", layout=lambda t: t.permute(0, 3, 1, 2))(x, methods=("gradcam", "hirescam"))
    for method in ("gradcam", "hirescam"):
        torch.testing.assert_close(auto.maps[method], explicit[method])


class Unstated(ChannelsLast):
    """Its CAM layer (a parameter-free activation) states nothing about its layout."""

    def __init__(self) -> None:
        super().__init__(width=9)
        self.act = nn.GELU()

    def forward(self, x):
        return self.head(self.act(self.stage(self.conv(x).permute(0, 2, 3, 1))).mean(dim=(1, 2)))


def test_an_ambiguous_layout_names_the_option():
    model = Unstated().eval()  # 9 channels on a 9x9 grid: [B, 9, 9, 9]
    with pytest.raises(ValueError, match=r"'act'.*9 channels fit both.*layout='nchw' or layout='nhwc'"):
        CAMEngine(model, "act")(torch.randn(1, 3, 9, 9))
    assert CAMEngine(model, "act", layout="nhwc").compute(torch.randn(1, 3, 9, 9)).layout == "nhwc"
    assert CAMEngine(model, "stage").compute(torch.randn(1, 3, 9, 9)).layout == "nhwc"  # its Linear says so


def test_a_layout_that_does_not_fit_the_tensor_names_the_value_and_the_choices():
    model = build("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8})
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(
        ValueError, match=r"layout='nhwc' does not fit target layer 'blocks.11.norm1'.*\(1, 17, 192\).*tokens"
    ):
        CAMEngine(model, layout="nhwc")(x)
    with pytest.raises(ValueError, match=r"Unknown layout 'nhcw'; valid: nchw, nhwc, tokens"):
        CAMEngine(model, layout="nhcw")(x)
    with pytest.raises(ValueError, match=r"after 4 prefix tokens the other 13 do not form a grid.*tokens:P"):
        CAMEngine(model, layout="tokens:4")(x)
    assert CAMEngine(model, layout="tokens:1").compute(x).layout == "tokens (1 prefix, 4x4 grid)"

"""Any model a user brings: layer choice across timm and torchvision families (never
pooling, never a reused module), every kind of output, compiled models, and a Hugging
Face image classifier through the engine and a fit."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torchvision
from torch import nn

from diffcam_lightning import CAMEngine
from diffcam_lightning.cams.layers import is_pooling

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

NINE = (
    "gradcam",
    "gradcam++",
    "hirescam",
    "xgradcam",
    "eigencam",
    "meandiffgradcam",
    "maxdiffgradcam",
    "lsediffgradcam",
    "meandiffgradcam++",
)

# torchvision name -> the layer picked (the last feature map before global pooling)
TORCHVISION = {
    "vgg11": "features.19",  # features.20 is the MaxPool
    "mobilenet_v2": "features",
    "mobilenet_v3_small": "features",
    "efficientnet_b0": "features",
    "regnet_x_400mf": "trunk_output",
    "convnext_tiny": "features.7",
    "squeezenet1_1": "features",
    "resnet18": "layer4",
    "resnext50_32x4d": "layer4",
    "wide_resnet50_2": "layer4",
    "densenet121": "features.norm5",
    "inception_v3": "Mixed_7c",
}


@pytest.mark.parametrize("name,layer", TORCHVISION.items(), ids=list(TORCHVISION))
def test_torchvision_families_pick_a_feature_map_never_pooling(name, layer):
    kwargs = {"init_weights": False, "aux_logits": False} if name == "inception_v3" else {}
    model = torchvision.models.get_model(name, num_classes=5, **kwargs).eval()
    size = 160 if name == "inception_v3" else 64  # at 96 px Mixed_7c is 1x1: a blank map, refused
    engine = CAMEngine(model)
    result = engine.compute(torch.randn(1, 3, size, size), methods=("gradcam",))
    assert result.layer == layer and not is_pooling(model.get_submodule(layer))
    assert result.layout == "nchw" and torch.isfinite(result.maps["gradcam"]).all()


@pytest.mark.parametrize(
    "timm_name,tv_name,channels",
    [
        ("efficientnet_b0", "efficientnet_b0", 1280),
        ("resnet18", "resnet18", 512),
        ("vgg11", "vgg11", 512),
        ("mobilenetv2_100", "mobilenet_v2", 1280),
    ],
)
def test_one_architecture_one_layer_from_timm_or_torchvision(timm_name, tv_name, channels):
    shapes = []
    for model in (timm.create_model(timm_name, num_classes=5), torchvision.models.get_model(tv_name, num_classes=5)):
        captured = {}
        engine = CAMEngine(model.eval())
        x = torch.randn(1, 3, 64, 64)
        engine(x)  # resolves the layer
        layer = model.get_submodule(engine.target_layer)

        def hook(module, inputs, output, captured=captured):
            captured["shape"] = tuple(output.shape)

        handle = layer.register_forward_hook(hook)
        model(x)
        handle.remove()
        shapes.append(captured["shape"][1])
    assert shapes == [channels, channels]  # timm efficientnet: bn2 after conv_head, as torchvision's features


class SharedActivation(nn.Module):
    """One activation module called twice per forward (as EfficientNet-Lite's ``_swish``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.act(self.conv2(self.act(self.conv1(x)))).mean(dim=(2, 3)))


def test_a_module_called_twice_is_refused_by_name_and_never_picked():
    model = SharedActivation().eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"'act' was called 2 times in one forward.*A layer called once: 'conv2'"):
        CAMEngine(model, "act")(x)
    engine = CAMEngine(model)
    engine(x)
    assert engine.target_layer == "conv2"


class Outputs(nn.Module):
    """A small CNN whose output takes each form a model may return."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        pooled = self.features(x).mean(dim=(2, 3))
        logits = self.head(pooled)
        return {
            "tensor": logits,
            "tuple": (logits, pooled),
            "features_first": (pooled, logits),
            "dict": {"logits": logits, "pooled": pooled},
            "object": type("ImageClassifierOutput", (), {"logits": logits, "hidden_states": None})(),
        }[self.form]


def test_every_output_form_gives_the_same_maps():
    torch.manual_seed(0)
    reference = Outputs("tensor").eval()
    x = torch.randn(2, 3, 8, 8)
    expected = CAMEngine(reference, "features")(x, methods=NINE)
    for form in ("tuple", "dict", "object"):
        model = Outputs(form).eval()
        model.load_state_dict(reference.state_dict())
        maps = CAMEngine(model, "features")(x, methods=NINE)
        for method in NINE:
            torch.testing.assert_close(maps[method], expected[method], msg=f"{form} {method}")


def test_features_before_logits_are_refused_or_picked_explicitly():
    torch.manual_seed(0)
    model = Outputs("features_first").eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(
        ValueError, match=r"starts with 8 values per image, but its classifier has 5 classes.*output_key=1"
    ):
        CAMEngine(model, "features")(x)
    maps = CAMEngine(model, "features", output_key=1)(x, methods=("gradcam", "scorecam"))
    reference = Outputs("tensor").eval()
    reference.load_state_dict(model.state_dict())
    expected = CAMEngine(reference, "features")(x, methods=("gradcam", "scorecam"))
    for method in ("gradcam", "scorecam"):
        torch.testing.assert_close(maps[method], expected[method])


def test_a_compiled_model_with_nine_methods_equals_the_uncompiled_maps():
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = CAMEngine(model)(x, methods=NINE)
    compiled = torch.compile(model, backend="aot_eager")  # inductor behaves alike, see README (slow to build)
    engine = CAMEngine(compiled)
    maps = engine(x, methods=NINE)
    assert engine.target_layer == "_orig_mod.layer4"
    for method in NINE:
        torch.testing.assert_close(maps[method], expected[method], atol=1e-5, rtol=0, msg=method)


class _OutMM(torch.autograd.Function):
    """x @ w whose backward uses ``torch.mm(..., out=)``: no vmap batching rule, as in the
    backward inductor generates for a compiled Linear (measured: "Batching rule not
    implemented for aten::mm.out")."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad_x = torch.empty(grad.shape[0], w.shape[0], dtype=grad.dtype)
        torch.mm(grad, w.t(), out=grad_x)
        return grad_x, x.t() @ grad


class OutHead(Outputs):
    def forward(self, x):
        return _OutMM.apply(self.features(x).mean(dim=(2, 3)), self.head.weight.t()) + self.head.bias


def test_an_unbatchable_backward_falls_back_to_one_pass_per_target_and_says_so_once():
    torch.manual_seed(0)
    reference = Outputs("tensor").eval()
    model = OutHead("tensor").eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 8, 8)
    expected = CAMEngine(reference, "features")(x, methods=NINE)
    engine = CAMEngine(model, "features")
    with pytest.warns(UserWarning, match=r"cannot be batched \(Batching rule not implemented for aten::mm.out"):
        maps = engine(x, methods=NINE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine(x, methods=NINE)  # said once
    for method in NINE:
        torch.testing.assert_close(maps[method], expected[method], msg=method)


def _hf_vit(num_labels: int = 4):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(config)


def test_a_hugging_face_image_classifier_through_the_engine():
    model = _hf_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    result = CAMEngine(model).compute(x, methods=NINE)
    assert result.layer.endswith("layers.1.layernorm_before") or result.layer.endswith("layer.1.layernorm_before")
    assert result.layout == "tokens (1 prefix, 4x4 grid)" and result.grid == (4, 4)
    expected = model(pixel_values=x).logits
    torch.testing.assert_close(result.logits, expected)
    for method in NINE:
        assert torch.isfinite(result.maps[method]).all() and result.maps[method].amax() > 0.99, method


def test_a_token_model_without_a_known_layer_is_refused_not_read_at_its_patch_embedding():
    model = _hf_vit().eval()
    model.__class__ = type("MyViT", (type(model),), {})  # an unknown family: no known layer
    with pytest.raises(ValueError, match=r"works on tokens after its last spatial map.*patch_embeddings.*target_layer"):
        CAMEngine(model)(torch.randn(1, 3, 32, 32))


def test_a_hugging_face_classifier_fits_one_epoch_with_a_cam_loss(tmp_path):
    import lightning as L

    from diffcam_lightning import SaliencyClassifier, SyntheticDataModule

    dm = SyntheticDataModule(
        image_size=32, train_size=32, val_size=16, test_size=16, batch_size=16, num_classes=4, preset="few"
    )
    module = SaliencyClassifier(
        network=_hf_vit(dm.num_classes), num_classes=dm.num_classes, sham_entropy=2.0, saliency_target="sham"
    )
    before = (
        [p.detach().clone() for p in module.model.vit.layers.parameters()]
        if hasattr(module.model.vit, "layers")
        else [p.detach().clone() for p in module.model.vit.encoder.parameters()]
    )
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, dm)
    after = (
        module.model.vit.layers.parameters()
        if hasattr(module.model.vit, "layers")
        else module.model.vit.encoder.parameters()
    )
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/saliency_mse"]) and torch.isfinite(metrics["val/loss"])


class LogitsObjectViT(nn.Module):
    """Stand-in for a Hugging Face classifier where transformers is not installed: a token
    model (timm ViT, 2 blocks) whose forward returns an object with ``.logits``."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.vit = timm.create_model(
            "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=num_classes
        )

    def forward(self, x):
        return type("ImageClassifierOutput", (), {"logits": self.vit(x)})()


def test_a_logits_object_token_model_fits_one_epoch_with_a_cam_loss(tmp_path):
    import lightning as L

    from diffcam_lightning import SaliencyClassifier, SyntheticDataModule

    dm = SyntheticDataModule(
        image_size=32, train_size=32, val_size=16, test_size=16, batch_size=16, num_classes=4, preset="few"
    )
    torch.manual_seed(0)
    module = SaliencyClassifier(
        network=LogitsObjectViT(dm.num_classes),
        num_classes=dm.num_classes,
        sham_entropy=2.0,
        saliency_target="sham",
        target_layer="vit.blocks.1.norm1",
    )
    before = [p.detach().clone() for p in module.model.vit.blocks.parameters()]
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, dm)
    assert any(not torch.equal(a, b) for a, b in zip(module.model.vit.blocks.parameters(), before))
    assert module.engine.compute(torch.randn(1, 3, 32, 32)).layout == "tokens (1 prefix, 4x4 grid)"
    assert torch.isfinite(trainer.callback_metrics["train/saliency_mse"])
    path = tmp_path / "vit.ckpt"
    trainer.save_checkpoint(path)
    stored = torch.load(path, weights_only=True)["diffcam"]
    assert (stored["target_layer"], stored["layout"]) == ("vit.blocks.1.norm1", "tokens:1")

"""Issue 21: the layer the search picks, and a model left exactly as it was (every
submodule's mode, ``.grad``, hooks, BatchNorm statistics) by every method."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from diffcam_lightning import METHODS, CAMEngine
from diffcam_lightning.cams.layers import resolve_layer
from diffcam_lightning.cams.modes import preserved_modes
from diffcam_lightning.report.timing import timing_table

pytestmark = pytest.mark.usefixtures("one_thread")


class PooledThenConvs(nn.Module):
    """stem -> max pool -> two convs -> global max -> head: the pool's output is freed before
    the last conv runs, so an ``id()`` of it can come back as that conv's output."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(8), nn.Conv2d(6, 6, 3), nn.Conv2d(6, 6, 3)
        )
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.features(x).amax(dim=(2, 3)))


def test_layer_search_takes_the_last_conv_after_a_freed_pooling_output():
    # grayscale input, a Sequential with an adaptive max pool: on the old trace (pooled
    # outputs remembered by id) features.3 came back on every run; the Sequential itself
    # (whose output is features.4's) is the last module with that map
    picked = {resolve_layer(PooledThenConvs(), None, torch.randn(1, 1, 32, 32))[0] for _ in range(8)}
    assert picked == {"features"}


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1),
            nn.BatchNorm2d(12),
            nn.ReLU(),
        )

    def forward(self, x):
        return self.body(x)


class Wrapper(nn.Module):
    """A train-mode wrapper around a frozen (eval-mode BN) backbone: a user's fine-tuning set-up."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.head = nn.Linear(12, classes)

    def forward(self, x):
        return self.head(self.backbone(x).mean(dim=(2, 3)))


def mixed_model() -> Wrapper:
    torch.manual_seed(0)
    model = Wrapper()
    with torch.no_grad():  # statistics that differ from a fresh BN's, so any update shows
        for bn in (model.backbone.body[1], model.backbone.body[5]):
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
    model.train()
    model.backbone.eval()
    return model


def snapshot(model: nn.Module) -> dict:
    return {
        "modes": {n: m.training for n, m in model.named_modules()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "hooks": [
            (n, dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
            for n, m in model.named_modules()
        ],
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
    }


def assert_untouched(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["hooks"] == before["hooks"]
    assert after["grads"].keys() == before["grads"].keys()
    for name, grad in before["grads"].items():
        assert (grad is None and after["grads"][name] is None) or torch.equal(grad, after["grads"][name]), name
    for name, value in before["buffers"].items():
        assert torch.equal(value, after["buffers"][name]), name


def test_an_explanation_of_a_train_mode_dropout_model_leaves_the_random_generators_as_they_were():
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(6, 3),
    ).train()  # mid-fit: dropout draws a mask in every forward
    engine, x = CAMEngine(model, "0"), torch.randn(2, 3, 8, 8)
    state = torch.get_rng_state()
    expected = torch.rand(4)
    torch.set_rng_state(state)
    engine(x, methods=("gradcam", "scorecam"))  # old: the dropout mask moved the generator
    assert torch.equal(torch.rand(4), expected)
    torch.set_rng_state(state)
    engine.compute(x, methods="gradcam", create_graph=True)  # a training forward draws, as model(x) does
    assert not torch.equal(torch.rand(4), expected)


def test_layer_search_restores_every_submodule_mode():
    model = mixed_model()
    before = snapshot(model)
    assert resolve_layer(model, None, torch.randn(1, 3, 16, 16))[0] == "backbone"
    assert_untouched(model, before)  # the old trace's model.train(True) put the backbone in train mode


def test_data_parallel_wrapped_eval_model_gives_the_unwrapped_maps():
    torch.manual_seed(1)
    inner = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()
    with torch.no_grad():
        for m in inner.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
    wrapped = nn.DataParallel(inner)  # the wrapper itself is in train mode (its default)
    x = torch.randn(3, 3, 12, 12)
    methods = ("gradcam", "scorecam", "ablationcam")
    plain = CAMEngine(inner)(x, methods=methods)
    got = CAMEngine(wrapped)(x, methods=methods)
    assert not any(m.training for m in inner.modules())
    for method in methods:
        torch.testing.assert_close(got[method], plain[method], atol=1e-5, rtol=0)


def test_every_method_leaves_a_mixed_mode_model_untouched():
    """The engine's promise, walked over every registered method at once and one by one,
    with the automatic layer search: modes, .grad (set ones kept, unset ones left None),
    hooks, every BatchNorm statistic."""
    model = mixed_model()
    model.head.weight.grad = torch.ones_like(model.head.weight)  # a user's accumulated gradient
    model.head.register_forward_hook(lambda m, i, o: None)
    x = torch.randn(2, 3, 16, 16)
    before = snapshot(model)
    engine = CAMEngine(model, scorecam_batch_size=7)
    maps = engine(x, methods=METHODS)
    assert set(maps) == set(METHODS) and engine.target_layer == "backbone"
    assert_untouched(model, before)
    for method in METHODS:
        engine(x[:1], methods=method)
        assert_untouched(model, before)


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_gradient_free_methods_evaluate_a_train_mode_model_in_eval_mode(method):
    """ScoreCAM / AblationCAM's extra forwards on a train-mode BN model: in eval mode (no
    statistics moved, maps independent of the batch they are scored in), modes restored."""
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
        nn.BatchNorm1d(3),
    ).train()
    x = torch.randn(2, 3, 10, 10)
    before = snapshot(model)
    small = CAMEngine(model, "3", scorecam_batch_size=1)(x, targets=[0, 1], methods=method)
    assert_untouched(model, before)
    large = CAMEngine(model, "3", scorecam_batch_size=64)(x, targets=[0, 1], methods=method)
    torch.testing.assert_close(small[method], large[method], atol=1e-5, rtol=0)


def test_timing_table_restores_each_submodule_mode():
    pytest.importorskip("pytorch_grad_cam")
    model = mixed_model()
    model.head.weight.grad = None
    before = snapshot(model)
    timing_table("wrapper", model, torch.randn(1, 3, 16, 16), 1, ["gradcam", "scorecam"], runs=3, discard=1)
    assert_untouched(model, before)  # pytorch-grad-cam's eval() and .grad undone per module


def test_preserved_modes_restores_flags_even_on_error():
    model = mixed_model()
    with pytest.raises(RuntimeError), preserved_modes(model):
        model.train()
        raise RuntimeError
    assert not model.backbone.training and model.training


# ---------------------------------------------------------------- class-token transformers


def _timm(name: str, **kwargs) -> nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=4, depth=2, **kwargs).eval()


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("eva02_tiny_patch14_224", {"img_size": 28, "global_pool": "token"}),
        ("beit_base_patch16_224", {"img_size": 32, "embed_dim": 32, "num_heads": 2, "global_pool": "token"}),
        (
            "vit_relpos_small_patch16_224",
            {"img_size": 32, "embed_dim": 32, "num_heads": 2, "global_pool": "token", "class_token": True},
        ),
        (
            "vit_base_patch16_rope_reg1_gap_256",
            {"img_size": 32, "embed_dim": 32, "num_heads": 2, "global_pool": "token", "class_token": True},
        ),
        # the class token joins after the patch-only blocks: no prefix token at the layer
        ("cait_xxs24_224", {"img_size": 32}),
        ("xcit_nano_12_p16_224", {"img_size": 32}),
    ],
)
def test_class_token_heads_get_the_last_blocks_first_norm(name, kwargs):
    torch.manual_seed(0)
    model = _timm(name, **kwargs)
    size = kwargs["img_size"]
    engine = CAMEngine(model)
    maps = engine(torch.randn(2, 3, size, size), methods=("gradcam", "hirescam"))
    assert engine.target_layer == "blocks.1.norm1"
    for cam in maps.values():
        assert (cam.flatten(1).amax(dim=1) > 0).all()  # no blank map


def test_an_all_zero_gradient_is_an_error_naming_the_layer_and_a_better_one():
    torch.manual_seed(0)
    model = _timm("beit_base_patch16_224", img_size=32, embed_dim=32, num_heads=2, global_pool="token")
    engine = CAMEngine(model, "blocks.1")  # its patch tokens never reach the class-token head
    with pytest.raises(ValueError, match=r"'blocks\.1' is exactly zero.*'blocks\.1\.norm1'"):
        engine(torch.randn(2, 3, 32, 32), methods="gradcam")
    # gradient-free methods need no gradient and still work there
    assert engine(torch.randn(2, 3, 32, 32), methods="eigencam")["eigencam"].shape == (2, 2, 2)


def _hf(kind: str):
    transformers = pytest.importorskip("transformers")
    vit = {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "num_labels": 3,
    }
    towers = {
        "vision_config": {k: v for k, v in vit.items() if k != "num_labels"},
        "text_config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32},
    }
    torch.manual_seed(0)
    return {
        "beit": lambda: transformers.BeitForImageClassification(transformers.BeitConfig(use_mean_pooling=False, **vit)),
        "data2vec": lambda: transformers.Data2VecVisionForImageClassification(transformers.Data2VecVisionConfig(**vit)),
        "dinov2": lambda: transformers.Dinov2ForImageClassification(transformers.Dinov2Config(**vit)),
        "clip": lambda: transformers.CLIPForImageClassification(transformers.CLIPConfig(num_labels=3, **towers)),
        "swin": lambda: transformers.SwinForImageClassification(
            transformers.SwinConfig(
                image_size=32, patch_size=8, embed_dim=8, depths=[1], num_heads=[1], window_size=2, num_labels=3
            )
        ),
    }[kind]().eval()


@pytest.mark.parametrize(
    "kind, layer",
    [
        ("beit", ".1.layernorm_before"),
        ("data2vec", ".1.layernorm_before"),
        ("dinov2", ".1.norm1"),
        ("clip", "layers.1.layer_norm1"),
        ("swin", "swin.layernorm"),
    ],
)
def test_hugging_face_vit_families_get_a_token_layer_automatically(kind, layer):
    """Refused before (their last spatial map is the patch embedding): each family's layer."""
    engine = CAMEngine(_hf(kind))
    result = engine.compute(torch.randn(2, 3, 32, 32), methods=("gradcam", "hirescam"))
    assert result.layer.endswith(layer) and result.grid == (4, 4)
    for cam in result.maps.values():
        assert (cam.flatten(1).amax(dim=1) > 0).all()


def test_a_zero_initialised_head_gives_blank_maps_not_an_error():
    """Logits equal for every image (timm's hiera / sequencer heads start at zero; a sanity
    validation runs before any training step): blank maps are the truth there."""
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=4).eval()
    nn.init.zeros_(model.fc.weight)
    maps = CAMEngine(model)(torch.randn(2, 3, 64, 64), methods=("gradcam", "gradcam++"))
    assert all(not cam.any() for cam in maps.values())


def test_a_1x1_grid_is_refused_not_a_blank_map():
    """timm inception_v4 at 96 px: its last stage is 1x1, so every map was constant (blank)."""
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=4).eval()  # 32 px -> layer4 is 1x1
    with pytest.raises(ValueError, match=r"'layer4' gives a 1x1 grid for a 32x32 input.*earlier"):
        CAMEngine(model)(torch.randn(2, 3, 32, 32), methods=("gradcam", "eigencam"))
    assert CAMEngine(model, "layer3")(torch.randn(2, 3, 32, 32), methods="gradcam")["gradcam"].shape == (2, 2, 2)

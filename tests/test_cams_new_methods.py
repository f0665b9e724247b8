"""The methods and targets added with the anchors' 2025-26 releases: parity with
pytorch-grad-cam 1.5.7 and torchcam 0.5 at 1e-4 on two architectures (torchvision
ResNet-18, timm DenseNet-121; random weights, 96 px), their Diff variants equal to the
method run with the difference target by hand, the pass counts, and model hygiene."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import (
    FEM,
    KPCA_CAM,
    FullGrad,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    RandomCAM,
    ShapleyCAM,
    XGradCAM,
)
from pytorch_grad_cam.finer_cam import FinerCAM
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputReST,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    FinerWeightedTarget,
)

from diffcam_lightning import CAMEngine
from diffcam_lightning.cams import BACKPROP_TARGETS, DIFF_BASES, GRADIENT_METHODS, TARGET_VALUES, get_method
from diffcam_lightning.cams.postprocess import minmax_normalize
from diffcam_lightning.cams.reference import DiffTarget, sign_corrected
from diffcam_lightning.cams.targets import nearest_classes

TARGETS = [1, 7]
ARCHS = ["resnet18", "densenet121"]


def build(name: str):
    """(model, target layer name): torchvision ResNet-18 (layer4 -> avgpool -> fc) and timm
    DenseNet-121 (features.norm5 ends in its ReLU, then pool -> classifier)."""
    torch.manual_seed(0)
    if name == "resnet18":
        return torchvision.models.resnet18(num_classes=10).eval(), "layer4"
    return timm.create_model("densenet121", pretrained=False, num_classes=10).eval(), "features.norm5"


@pytest.fixture(scope="module", params=ARCHS)
def arch(request):
    model, layer_name = build(request.param)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    return request.param, model, layer_name, x


def reference(model, layer_name, x, cam_class, targets, **kwargs):
    layer = dict(model.named_modules())[layer_name]
    with cam_class(model, target_layers=[layer], **kwargs) as cam:
        return torch.from_numpy(cam(x, targets=targets))


def assert_parity(ours, expected, label):
    assert ours.shape == expected.shape, label
    diff = (ours - expected).abs().max().item()
    assert diff <= 1e-4, f"{label}: max abs diff {diff:.2e}"
    assert ours.max() > 0.99, f"{label}: not a real map"


# ------------------------------------------------------------------ targets

TARGET_CLASSES = {"rest": ClassifierOutputReST, "softmax": ClassifierOutputSoftmaxTarget}
WEIGHTINGS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigengradcam": sign_corrected("EigenGradCAM"),
}  # the documented sign (methods.salient_sign)


@pytest.mark.parametrize("target", ["rest", "softmax", "finer"])
def test_target_vectors_are_exact_gradients_of_the_target(target):
    torch.manual_seed(1)
    logits = torch.randn(4, 6, requires_grad=True)
    targets = torch.tensor([0, 5, 2, 2])
    (expected,) = torch.autograd.grad(TARGET_VALUES[target](logits, targets).sum(), logits)
    torch.testing.assert_close(BACKPROP_TARGETS[target](logits, targets), expected)
    torch.testing.assert_close(BACKPROP_TARGETS[target](logits.detach(), targets), expected)


def test_target_values_equal_pytorch_grad_cam_targets():
    torch.manual_seed(2)
    logits = torch.randn(3, 8)
    targets = torch.tensor([4, 0, 7])
    others = nearest_classes(logits, targets, (1, 2, 3))
    for row, c in enumerate(targets.tolist()):
        y = logits[row]
        assert torch.isclose(TARGET_VALUES["rest"](logits, targets)[row], ClassifierOutputReST(c)(y))
        assert torch.isclose(TARGET_VALUES["softmax"](logits, targets)[row], ClassifierOutputSoftmaxTarget(c)(y))
        finer = FinerWeightedTarget(c, others[row].tolist(), 1.0)(y)
        assert torch.isclose(TARGET_VALUES["finer"](logits, targets)[row], finer)
        # the comparison classes are the three whose logits are nearest y_c
        distance = (y - y[c]).abs()
        distance[c] = float("inf")
        assert set(others[row].tolist()) == set(distance.argsort()[:3].tolist())


def test_every_weighting_composes_with_every_target_in_one_vjp():
    for prefix in ("rest", "finer", "softmax"):
        for weighting in WEIGHTINGS:
            method = get_method(f"{prefix}{weighting}")
            assert method.backprop == prefix and method.name in GRADIENT_METHODS


def test_target_methods_match_pytorch_grad_cam_target_classes(arch):
    name, model, layer_name, x = arch
    methods = [f"{p}{w}" for p in TARGET_CLASSES for w in WEIGHTINGS]
    ours = CAMEngine(model, layer_name)(x, targets=TARGETS, methods=methods, size="input")
    for prefix, target_class in TARGET_CLASSES.items():
        for weighting, cam_class in WEIGHTINGS.items():
            expected = reference(model, layer_name, x, cam_class, [target_class(c) for c in TARGETS])
            assert_parity(ours[f"{prefix}{weighting}"], expected, f"{name} {prefix}{weighting}")


def test_finercam_matches_pytorch_grad_cam(arch):
    """FinerCAM = GradCAM on the FinerWeighted target (nearest three classes, alpha 1);
    finergradcam++ likewise with GradCAM++ as FinerCAM's base method."""
    name, model, layer_name, x = arch
    ours = CAMEngine(model, layer_name)(x, targets=TARGETS, methods=["finercam", "finergradcam++"], size="input")
    layer = dict(model.named_modules())[layer_name]
    for method, base in (("finercam", GradCAM), ("finergradcam++", GradCAMPlusPlus)):
        rows = []
        for i, c in enumerate(TARGETS):
            with FinerCAM(model, [layer], base_method=base) as cam:
                rows.append(torch.from_numpy(cam(x[i : i + 1], target_idx=c)))
        assert_parity(ours[method], torch.cat(rows), f"{name} {method}")


# ------------------------------------------------------------------ gradient-free weightings


def test_kpcacam_and_fem_match_pytorch_grad_cam(arch):
    pytest.importorskip("sklearn")
    name, model, layer_name, x = arch
    ours = CAMEngine(model, layer_name)(x, targets=TARGETS, methods=["kpcacam", "fem"], size="input")
    assert_parity(ours["kpcacam"], reference(model, layer_name, x, KPCA_CAM, None), f"{name} kpcacam")
    assert_parity(ours["fem"], reference(model, layer_name, x, FEM, None), f"{name} fem")


def test_randomcam_matches_pytorch_grad_cam_at_the_same_seed_and_leaves_the_rng(arch):
    name, model, layer_name, x = arch
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    torch_state = torch.get_rng_state()
    ours = CAMEngine(model, layer_name, seed=5)(x, targets=TARGETS, methods="randomcam", size="input")["randomcam"]
    assert np.array_equal(np.random.get_state()[1], state) and torch.equal(torch.get_rng_state(), torch_state)
    np.random.seed(5)
    expected = reference(model, layer_name, x, RandomCAM, [ClassifierOutputTarget(c) for c in TARGETS])
    assert_parity(ours, expected, f"{name} randomcam")
    other = CAMEngine(model, layer_name, seed=6)(x, targets=TARGETS, methods="randomcam", size="input")["randomcam"]
    assert (other - ours).abs().max() > 0.1  # the seed draws the weights


def test_cam_matches_torchcam(arch):
    tc = pytest.importorskip("torchcam.methods")
    name, model, layer_name, x = arch
    """torchcam's CAM skips the ReLU its docstring states; the weighted sums are compared
    unnormalised, after the ReLU every method of ours applies."""
    ours = CAMEngine(model, layer_name)(x, targets=TARGETS, methods="cam", normalize=False)["cam"]  # layer grid
    fc = "fc" if name == "resnet18" else "classifier"
    with tc.CAM(model, layer_name, fc, input_shape=tuple(x.shape[1:])) as extractor:
        model(x)
        (raw,) = extractor(class_idx=TARGETS, normalized=False)
    expected = torch.relu(raw)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=1e-4 * float(expected.max()), rtol=0)
    assert expected.max() > 0


def test_cam_refuses_a_layer_that_is_not_pooled_into_the_classifier():
    model, _ = build("resnet18")
    with pytest.raises(ValueError, match="cam: the last nn.Linear takes 512 features"):
        CAMEngine(model, "layer3")(torch.randn(1, 3, 64, 64), methods="cam")
    relu_after = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    relu_after.layer4[-1].act2 = torch.nn.Identity()  # layer4's last conv+bn, no ReLU inside the layer
    engine = CAMEngine(relu_after, "layer4.1.bn2")  # pooled after the residual add: not W mean(A) + b
    with pytest.raises(ValueError, match="not the last nn.Linear of the target layer's global average pool"):
        engine(torch.randn(1, 3, 64, 64), methods="cam")


# ------------------------------------------------------------------ second order


def test_shapleycam_matches_pytorch_grad_cam(arch):
    name, model, layer_name, x = arch
    ours = CAMEngine(model, layer_name)(
        x, targets=TARGETS, methods=["shapleycam", "restshapleycam", "restgradcam"], size="input"
    )
    plain = reference(model, layer_name, x, ShapleyCAM, [ClassifierOutputTarget(c) for c in TARGETS])
    assert_parity(ours["shapleycam"], plain, f"{name} shapleycam")
    rest = reference(model, layer_name, x, ShapleyCAM, [ClassifierOutputReST(c) for c in TARGETS])
    assert_parity(ours["restshapleycam"], rest, f"{name} restshapleycam")
    # ReST's curvature makes the Hessian term count: not GradCAM on the same target
    assert (ours["restshapleycam"] - ours["restgradcam"]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["mean", "max", "lse"])
def test_diff_variants_of_new_methods_equal_the_method_with_the_difference_target(arch, kind):
    """meandiffshapleycam etc. = pytorch-grad-cam's class given y_c - beta(others) by hand."""
    name, model, layer_name, x = arch
    ours = CAMEngine(model, layer_name)(x, targets=TARGETS, methods=[f"{kind}diffshapleycam"], size="input")
    assert DIFF_BASES[f"{kind}diffshapleycam"] == "shapleycam"
    expected = reference(model, layer_name, x, ShapleyCAM, [DiffTarget(c, kind) for c in TARGETS])
    assert_parity(ours[f"{kind}diffshapleycam"], expected, f"{name} {kind}diffshapleycam")


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_fullgrad_and_its_diff_variants_match_pytorch_grad_cam(name):
    """torchvision's DenseNet-121 here: its norms are plain BatchNorm2d (timm's BatchNormAct2d
    is not a bias layer to FullGrad, on both sides)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    layer_name = "layer4" if name == "resnet18" else "features.norm5"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    methods = ["fullgrad", "meandifffullgrad", "lsedifffullgrad"]
    ours = CAMEngine(model, layer_name)(x, targets=TARGETS, methods=methods, size="input")
    with FullGrad(model, []) as cam:
        expected = {"fullgrad": torch.from_numpy(cam(x, targets=[ClassifierOutputTarget(c) for c in TARGETS]))}
        for kind in ("mean", "lse"):
            expected[f"{kind}difffullgrad"] = torch.from_numpy(cam(x, targets=[DiffTarget(c, kind) for c in TARGETS]))
    for method in methods:
        assert_parity(ours[method], expected[method], f"{name} {method}")


def test_fullgrad_shares_one_forward_across_its_targets():
    model, layer_name = build("resnet18")
    forwards = []
    handle = model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        CAMEngine(model, layer_name)(
            torch.randn(2, 3, 64, 64),
            targets=TARGETS,
            methods=["fullgrad", "meandifffullgrad", "maxdifffullgrad", "restfullgrad"],
        )
    finally:
        handle.remove()
    assert len(forwards) == 2  # the engine's, then FullGrad's one for its four targets


# ------------------------------------------------------------------ passes and hygiene


def test_target_methods_take_one_forward_and_one_batched_vjp(monkeypatch):
    model, layer_name = build("resnet18")
    x = torch.randn(2, 3, 64, 64)
    forwards = []
    handle = model.register_forward_hook(lambda *_: forwards.append(1))
    calls = []
    grad = torch.autograd.grad

    def counted(*args, **kwargs):
        calls.append(kwargs.get("is_grads_batched", False))
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counted)
    methods = [m for m in GRADIENT_METHODS if m.startswith(("rest", "finer", "softmax"))] + ["gradcam", "finercam"]
    try:
        CAMEngine(model, layer_name)(x, targets=TARGETS, methods=methods)
    finally:
        handle.remove()
    # the finer target's vector is itself an autograd.grad of the target w.r.t. the [B, C] logits
    network_vjps = [batched for batched in calls if batched]
    assert len(forwards) == 1 and network_vjps == [True] and len(calls) == 2


NEW_METHODS = [
    "restgradcam",
    "finercam",
    "softmaxgradcam++",
    "kpcacam",
    "fem",
    "randomcam",
    "cam",
    "shapleycam",
    "meandiffshapleycam",
    "fullgrad",
    "maxdifffullgrad",
]


def test_new_methods_leave_the_model_as_it_was():
    """Modes, .grad, hooks and BatchNorm statistics as they were: an explanation call
    (create_graph=False) restores train-mode statistics after the engine's one forward, and
    FullGrad's own forward runs in eval mode and moves nothing."""
    import copy

    model, _layer_name = build("resnet18")
    model.train()
    model.layer1.eval()  # a mixed mode must survive
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    x = torch.randn(2, 3, 64, 64)
    plain = copy.deepcopy(model)
    modes = {n: m.training for n, m in model.named_modules()}
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    CAMEngine(model, "layer4")(x, targets=TARGETS, methods=NEW_METHODS)
    assert {n: m.training for n, m in model.named_modules()} == modes
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, plain.state_dict()[k], msg=k)
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    assert hooks == sum(
        len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules()
    )


# ------------------------------------------------------------------ torchcam's smoothed methods

SMOOTHED = {"sscam3": "SSCAM", "iscam3": "ISCAM", "smoothgradcam++": "SmoothGradCAMpp", "meandiffsmoothgradcam++": None}


@pytest.fixture(scope="module")
def few_samples():
    """SSCAM / ISCAM with 3 samples (35 and 10 by default: one forward per channel each)."""
    import functools

    from diffcam_lightning.cams.methods import METHOD_REGISTRY, iscam, register_method, sscam

    for name, fn in (("sscam3", sscam), ("iscam3", iscam)):
        if name not in METHOD_REGISTRY:
            register_method(name)(functools.partial(fn, num_samples=3))


@pytest.mark.parametrize("name,layer_name,size", [("resnet18", "layer2", 32), ("mobilenet_v2", "features.6", 64)])
def test_smoothed_methods_match_torchcam_at_the_same_seed(few_samples, name, layer_name, size):
    """The same noise as torchcam after torch.manual_seed(seed), from a private generator.
    Random-init MobileNet's maps are ~1e-17, where torchcam's normalisation (x / (max + 1e-8))
    is not a min-max: the raw maps are compared (relative 1e-4), and normalised on ResNet-18."""
    tc = pytest.importorskip("torchcam.methods")
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    state = torch.get_rng_state()
    engine = CAMEngine(model, layer_name, scorecam_batch_size=256, seed=3)
    methods = [m for m in SMOOTHED if SMOOTHED[m]]
    raw = engine(x, targets=TARGETS, methods=methods, normalize=False)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not used
    for method in methods:
        kwargs = {"num_samples": 3, "batch_size": 256} if method != "smoothgradcam++" else {}
        with getattr(tc, SMOOTHED[method])(model, layer_name, input_shape=(3, size, size), **kwargs) as extractor:
            torch.manual_seed(3)
            scores = model(x)
            torch.manual_seed(3)
            (expected,) = extractor(class_idx=TARGETS, scores=scores, normalized=False)
        torch.testing.assert_close(raw[method], expected, rtol=0, atol=1e-4 * float(expected.abs().max()), msg=method)
        assert expected.max() > 0, method
        if name == "resnet18":
            ours = minmax_normalize(raw[method])  # what the engine's normalize=True does
            assert_parity(ours, tc.core._CAM._normalize(expected.clone()), f"{name} {method}")


def test_smoothed_methods_draw_from_the_seed(few_samples):
    model, _ = build("resnet18")
    x = torch.randn(1, 3, 32, 32)
    a, b, c = (
        CAMEngine(model, "layer2", seed=seed, scorecam_batch_size=128)(
            x, targets=[1], methods=["smoothgradcam++", "sscam3"], normalize=False
        )
        for seed in (0, 0, 1)
    )
    for method in a:
        assert torch.equal(a[method], b[method]) and not torch.equal(a[method], c[method]), method


def test_smoothgradcampp_diff_variant_equals_the_difference_target_by_hand():
    """meandiffsmoothgradcam++ = SmoothGradCAM++ whose every noisy backward takes
    y_c - mean(others): torchcam's extractor given that target as a callable."""
    tc = pytest.importorskip("torchcam.methods")
    model, _ = build("resnet18")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ours = CAMEngine(model, "layer2", seed=3)(x, targets=TARGETS, methods="meandiffsmoothgradcam++", normalize=False)
    diff = [DiffTarget(c, "mean") for c in TARGETS]  # per-sample callables on one row of logits
    with tc.SmoothGradCAMpp(model, "layer2", input_shape=(3, 64, 64)) as extractor:
        torch.manual_seed(3)
        scores = model(x)
        torch.manual_seed(3)
        (expected,) = extractor(scores=scores, targets=diff, normalized=False)
    torch.testing.assert_close(
        ours["meandiffsmoothgradcam++"], expected, rtol=0, atol=1e-4 * float(expected.abs().max())
    )


# ------------------------------------------------------------------ guided backprop


def grad_cam_guided(model, x, targets, target_fn=None):
    """pytorch-grad-cam's guided backprop on a copy (it replaces the ReLUs and restores them
    without inplace=True), one image at a time as it supports; ``target_fn(row) -> scalar``
    backpropagates another target through its guided ReLUs by hand."""
    import copy

    from pytorch_grad_cam import GuidedBackpropReLUModel
    from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUasModule
    from pytorch_grad_cam.utils.find_layers import replace_all_layer_type_recursive

    rows = []
    for i, c in enumerate(targets):
        clone = copy.deepcopy(model)
        if target_fn is None:
            rows.append(
                torch.from_numpy(GuidedBackpropReLUModel(clone, device="cpu")(x[i : i + 1], c)).permute(2, 0, 1)
            )
            continue
        replace_all_layer_type_recursive(clone, torch.nn.ReLU, GuidedBackpropReLUasModule())
        image = x[i : i + 1].clone().requires_grad_()
        target_fn(c)(clone(image)[0]).backward()
        rows.append(image.grad[0])
    return torch.stack(rows)


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_guided_backprop_and_guided_gradcam_match_pytorch_grad_cam(name):
    from diffcam_lightning.cams import guided_backprop, guided_gradcam

    model, layer_name = build(name)  # timm's DenseNet: torchvision's applies an in-place ReLU to
    # features.norm5's output, which pytorch-grad-cam's GradCAM then reads as the layer's output
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    relus = [(m, m.inplace) for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    ours = guided_backprop(model, x, TARGETS)
    expected = grad_cam_guided(model, x, TARGETS)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))
    cam = reference(model, layer_name, x, GradCAM, [ClassifierOutputTarget(c) for c in TARGETS])
    combined = guided_gradcam(model, x, TARGETS, layer_name)
    torch.testing.assert_close(combined, cam.unsqueeze(1) * expected, rtol=0, atol=1e-4 * float(expected.abs().max()))
    # the model's own modules untouched: the same ReLUs, still in place, no hook left
    assert [(m, m.inplace) for m in model.modules() if isinstance(m, torch.nn.ReLU)] == relus
    assert not any(m._forward_hooks for m in model.modules())


def test_guided_backprop_diff_target_equals_the_difference_by_hand():
    from diffcam_lightning.cams import guided_backprop

    model, _ = build("resnet18")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ours = guided_backprop(model, x, TARGETS, backprop=["mean", "lse"])
    for kind in ("mean", "lse"):
        expected = grad_cam_guided(model, x, TARGETS, lambda c, kind=kind: DiffTarget(c, kind))
        torch.testing.assert_close(ours[kind], expected, rtol=0, atol=1e-4 * float(expected.abs().max()), msg=kind)


# ------------------------------------------------------------------ LeGrad

VITS = [
    {"image_size": 32, "patch_size": 8, "num_layers": 3, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64},
    {"image_size": 48, "patch_size": 8, "num_layers": 4, "num_heads": 4, "hidden_dim": 48, "mlp_dim": 96},
]


def tiny_vit(config):
    """A torchvision VisionTransformer (torchcam's LeGrad supports no other), random
    weights; its head is zero-initialised by torchvision, so it gets random weights too."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(num_classes=10, **config).eval()
    torch.nn.init.normal_(model.heads.head.weight)
    return model


@pytest.mark.parametrize("config", VITS, ids=["vit-3x32", "vit-4x48"])
def test_legrad_matches_torchcam(config):
    tc = pytest.importorskip("torchcam.methods")
    from diffcam_lightning.cams import legrad

    model = tiny_vit(config)
    x = torch.randn(2, 3, config["image_size"], config["image_size"], generator=torch.Generator().manual_seed(1))
    for blocks in (list(model.encoder.layers)[-2:], list(model.encoder.layers)):
        ours = legrad(model, x, TARGETS, blocks=blocks)
        with tc.LeGrad(model, blocks) as extractor:
            model(x)
            (expected,) = extractor(TARGETS, normalized=False)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4 * float(expected.max()))
        assert expected.max() > 0
    # through the engine, every block (the engine's layer is only its forward's hook)
    maps = CAMEngine(model, "encoder.layers.encoder_layer_1")(x, targets=TARGETS, methods="legrad")
    assert_parity(maps["legrad"], minmax_normalize(ours), "engine legrad")


@pytest.mark.parametrize("kind", ["mean", "lse"])
def test_legrad_diff_variant_equals_torchcam_with_the_difference_as_its_score(kind):
    """torchcam's LeGrad scores blocks by column c of a projection: giving it
    y_c - beta(others) for every c is the difference target by hand."""
    tc = pytest.importorskip("torchcam.methods")
    from diffcam_lightning.cams.targets import beta

    model = tiny_vit(VITS[0])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    def differences(tokens):
        y = model.heads(model.encoder.ln(tokens.mean(dim=1)))
        return torch.stack([y[:, c] - beta(y, torch.full((len(y),), c), kind) for c in range(y.shape[1])], dim=1)

    ours = CAMEngine(model, "encoder.layers.encoder_layer_1")(
        x, targets=TARGETS, methods=f"{kind}difflegrad", normalize=False
    )
    with tc.LeGrad(model, list(model.encoder.layers), score_projection=differences) as extractor:
        model(x)
        (expected,) = extractor(TARGETS, normalized=False)
    torch.testing.assert_close(ours[f"{kind}difflegrad"], expected, rtol=0, atol=1e-4 * float(expected.max()))


# ------------------------------------------------------------------ RefineCAM


@pytest.mark.parametrize(
    "name,layers",
    [("resnet18", ["layer2", "layer3", "layer4"]), ("densenet121", ["features.denseblock3", "features.norm5"])],
)
def test_refinecam_and_its_diff_variant_match_pytorch_grad_cam(name, layers):
    from pytorch_grad_cam.refine_cam import RefineCAM

    from diffcam_lightning.cams import refinecam

    model, _ = build(name)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    modules = [dict(model.named_modules())[n] for n in layers]
    for method, cam_targets in (
        ("gradcam++", [ClassifierOutputTarget(c) for c in TARGETS]),
        ("meandiffgradcam++", [DiffTarget(c, "mean") for c in TARGETS]),
    ):
        ours = refinecam(model, x, layers, TARGETS, method)
        expected = torch.from_numpy(RefineCAM(model, modules)(x, targets=cam_targets))
        assert_parity(ours, expected, f"{name} refinecam {method}")


def model_state(model):
    return (
        {n: m.training for n, m in model.named_modules()},
        {k: v.clone() for k, v in model.state_dict().items()},
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
    )


def assert_same_state(before, after):
    assert before[0] == after[0]
    assert before[1].keys() == after[1].keys() and all(torch.equal(before[1][k], after[1][k]) for k in before[1])
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(before[2], after[2]))
    assert before[3] == after[3]


def test_opt_in_methods_and_functions_leave_the_model_as_it_was(few_samples):
    from diffcam_lightning.cams import guided_backprop, guided_gradcam, legrad, refinecam

    model, _ = build("resnet18")
    model.fc.train()  # a mixed mode (no BatchNorm in train mode: the statistics must not move at all)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    x = torch.randn(1, 3, 64, 64)  # layer4's grid is 2x2 (a 1x1 grid is refused)
    before = model_state(model)
    CAMEngine(model, "layer4", scorecam_batch_size=512)(x, targets=[1], methods=["sscam3", "iscam3", "smoothgradcam++"])
    guided_backprop(model, x, [1], ["logit", "max"])
    guided_gradcam(model, x, [1], "layer4", "maxdiffgradcam")
    refinecam(model, x, ["layer3", "layer4"], [1])
    assert_same_state(before, model_state(model))
    vit = tiny_vit(VITS[0]).train()  # its dropout is 0: train mode changes nothing but must survive
    before = model_state(vit)
    legrad(vit, torch.randn(1, 3, 32, 32), [1], backprop=["logit", "mean"])
    assert_same_state(before, model_state(vit))


def test_a_single_logit_model_refuses_the_contrastive_targets_only():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 1),
    ).eval()
    engine = CAMEngine(model, "1")
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="finergradcam compares the target class with the others"):
        engine(x, methods=["restgradcam", "finergradcam"])
    maps = engine(x, methods=["gradcam", "restgradcam"])  # 2 y - logsumexp(y) = y with one logit
    torch.testing.assert_close(maps["restgradcam"], maps["gradcam"])


def tiny_timm_vit():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=10).eval()
    torch.nn.init.normal_(model.head.weight)
    return model


def test_legrad_on_a_timm_vit_reads_its_own_attention():
    """No anchor runs LeGrad on timm's ViTs (ours only): its attention probabilities are
    recomputed from the block's q/k/v, checked against the block's own output, so the maps
    do not depend on timm's fused kernel; the Diff target equals the differences given by
    hand as the block score; a block computing something else is refused."""
    from diffcam_lightning.cams import legrad
    from diffcam_lightning.cams.targets import beta

    model = tiny_timm_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    maps = legrad(model, x, TARGETS, backprop=["logit", "mean"])
    assert maps["logit"].shape == (2, 4, 4) and maps["logit"].max() > 0
    for block in model.blocks:
        block.attn.fused_attn = not block.attn.fused_attn
    torch.testing.assert_close(legrad(model, x, TARGETS), maps["logit"], rtol=0, atol=1e-6)

    def differences(tokens):
        y = model.forward_head(model.norm(tokens))
        return torch.stack([y[:, c] - beta(y, torch.full((len(y),), c), "mean") for c in range(y.shape[1])], dim=1)

    by_hand = legrad(model, x, TARGETS, score_projection=differences)
    torch.testing.assert_close(maps["mean"], by_hand, rtol=0, atol=1e-6)
    assert (maps["mean"] - maps["logit"]).abs().max() > 1e-4  # the target matters
    model.blocks[1].attn.register_forward_hook(lambda m, i, o: o * 2)  # not what its q/k/v give
    with pytest.raises(ValueError, match="legrad: block 'blocks.1'"):
        legrad(model, x, TARGETS)

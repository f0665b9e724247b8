"""CAMEngine behaviour: batched == per-target reference, the paper's properties,
hygiene (no trace left on the model), and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from diffcam_lightning import METHODS, CAMEngine
from diffcam_lightning.cams import BACKPROP_TARGETS, DIFF_BASES, GRADIENT_METHODS, TARGET_VALUES, beta, get_method
from diffcam_lightning.cams.methods import CAMContext
from diffcam_lightning.cams.postprocess import minmax_normalize

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus


class TinyNet(nn.Module):
    """conv features -> global average pool -> linear head; optional shared logit term."""

    def __init__(self, classes: int = 5, shared: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, classes)
        self.shared = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)) if shared else None

    def forward(self, x):
        pooled = self.pool(self.features(x)).flatten(1)
        logits = self.head(pooled)
        if self.shared is not None:  # g(x) added to every logit: invisible to softmax
            logits = logits + self.shared(pooled * pooled)
        return logits


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TinyNet().eval(), torch.randn(3, 3, 16, 16)


def capture_activations(model, layer, x):
    """Reference forward: A from a hook, logits, without the engine."""
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("A", o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return store["A"], logits


def target_scalar(logits, targets, kind):
    picked = logits.gather(1, targets[:, None]).squeeze(1)
    return picked if kind is None else picked - beta(logits, targets, kind)


def test_batched_vjp_equals_one_autograd_grad_per_target(tiny):
    model, x = tiny
    targets = torch.tensor([0, 3, 4])
    ours = CAMEngine(model, "features")(x, targets=targets, methods=GRADIENT_METHODS)
    acts, logits = capture_activations(model, model.features, x)
    for name in GRADIENT_METHODS:
        method = get_method(name)
        scalar = TARGET_VALUES[method.backprop](logits, targets).sum()
        (grad,) = torch.autograd.grad(scalar, acts, retain_graph=True)
        ctx = CAMContext(acts.detach(), {method.backprop: grad}, backprop=method.backprop)
        expected = minmax_normalize(torch.relu(method.compute(ctx)))
        torch.testing.assert_close(ours[name], expected, atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("kind", ["mean", "max", "lse"])
def test_target_vectors_are_exact_gradients_of_delta(kind):
    torch.manual_seed(1)
    logits = torch.randn(4, 6, requires_grad=True)
    targets = torch.tensor([0, 5, 2, 2])
    (expected,) = torch.autograd.grad(target_scalar(logits, targets, kind).sum(), logits)
    torch.testing.assert_close(BACKPROP_TARGETS[kind](logits, targets), expected)


class DiffTarget:
    """A pytorch-grad-cam target for Delta_c = y_c - beta(others): its own backward."""

    def __init__(self, category: int, kind: str) -> None:
        self.category, self.kind = category, kind

    def __call__(self, output):
        logits, targets = output[None], torch.tensor([self.category])
        return target_scalar(logits, targets, self.kind)[0]


@pytest.mark.parametrize("family,reference", [("gradcam", GradCAM), ("gradcam++", GradCAMPlusPlus)])
@pytest.mark.parametrize("kind", ["mean", "max", "lse"])
def test_diffgradcam_matches_pytorch_grad_cam_with_a_difference_target(tiny, family, reference, kind):
    model, x = tiny
    targets = [1, 2, 4]
    ours = CAMEngine(model, "features")(x, targets=targets, methods=f"{kind}diff{family}", size="input")
    with reference(model, [model.features]) as cam:
        expected = torch.from_numpy(cam(x, targets=[DiffTarget(t, kind) for t in targets]))
    # The tiny net's raw maps are ~1e-3 with cancelling channel terms, so float32
    # summation order alone moves normalised values by ~1e-4; the timm parity tests hold 1e-4.
    assert (ours[f"{kind}diff{family}"] - expected).abs().max() <= 5e-4


def test_two_classes_all_diff_variants_equal_the_y1_minus_y2_map():
    torch.manual_seed(2)
    model, x = TinyNet(classes=2).eval(), torch.randn(4, 3, 16, 16)
    targets = torch.tensor([0, 1, 1, 0])
    engine = CAMEngine(model, "features")
    maps = engine(x, targets=targets, methods=["gradcam", "meandiffgradcam", "maxdiffgradcam", "lsediffgradcam"])
    acts, logits = capture_activations(model, model.features, x)
    other = 1 - targets
    delta = logits.gather(1, targets[:, None]) - logits.gather(1, other[:, None])
    (grad,) = torch.autograd.grad(delta.sum(), acts)
    expected = minmax_normalize(torch.relu((grad.mean((2, 3), keepdim=True) * acts).sum(1))).detach()
    for name in ("meandiffgradcam", "maxdiffgradcam", "lsediffgradcam"):
        torch.testing.assert_close(maps[name], expected, atol=1e-5, rtol=0)
    assert not torch.allclose(maps["gradcam"], expected, atol=1e-3)  # y_c alone is different


def test_baselines_are_ordered_mean_lse_max():
    torch.manual_seed(3)
    logits = torch.randn(256, 10) * 3
    targets = torch.randint(0, 10, (256,))
    mean, lse, top = (beta(logits, targets, k) for k in ("mean", "lse", "max"))
    assert torch.all(mean <= lse + 1e-6) and torch.all(lse <= top + 1e-6)
    assert (lse - mean).abs().max() > 0.1  # not trivially equal


def test_shared_logit_term_changes_gradcam_but_no_diffgradcam():
    torch.manual_seed(4)
    plain = TinyNet(classes=6).eval()
    fooled = TinyNet(classes=6, shared=True).eval()
    fooled.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        for p in fooled.shared.parameters():
            p.normal_(0, 2.0)
    x = torch.randn(4, 3, 16, 16)
    targets = torch.tensor([0, 1, 2, 5])
    diff_methods = [m for m in GRADIENT_METHODS if m in DIFF_BASES]
    bases = sorted({DIFF_BASES[m] for m in diff_methods})
    assert len(diff_methods) == 3 * len(bases) == 21  # every weighting has its three Diff variants
    clean = CAMEngine(plain, "features")(x, targets=targets, methods=[*bases, *diff_methods])
    hoax = CAMEngine(fooled, "features")(x, targets=targets, methods=[*bases, *diff_methods])
    for name in diff_methods:
        torch.testing.assert_close(hoax[name], clean[name], atol=1e-5, rtol=0, msg=name)
    for name in bases:  # the same weighting on y_c sees the shared term
        assert (hoax[name] - clean[name]).abs().max() > 1e-2, name


def test_meandiff_weights_with_linear_head_are_class_weight_minus_mean_of_others(tiny):
    model, x = tiny
    targets = torch.tensor([2, 0, 4])
    maps = CAMEngine(model, "features")(x, targets=targets, methods=["meandiffgradcam"], normalize=False)
    acts, _ = capture_activations(model, model.features, x)
    weight = model.head.weight.detach()  # [C, K]
    c = weight.shape[0]
    w_c = weight[targets]
    w_others = (weight.sum(0, keepdim=True) - w_c) / (c - 1)
    z = acts.shape[-1] * acts.shape[-2]
    expected = torch.relu(torch.einsum("bk,bkhw->bhw", (w_c - w_others) / z, acts.detach()))
    torch.testing.assert_close(maps["meandiffgradcam"], expected, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------ outputs and options


def test_output_contract(tiny):
    model, x = tiny
    engine = CAMEngine(model)
    maps = engine(x, methods=METHODS)
    assert engine.target_layer == "features"  # hooked search: last [B, K, h, w] output
    assert list(maps) == list(METHODS)
    for name, cam in maps.items():
        assert cam.shape == (3, 8, 8) and cam.dtype == torch.float32, name
        assert cam.min() >= 0 and cam.max() <= 1 and torch.isfinite(cam).all(), name
        assert not cam.requires_grad
    assert engine.compute(x, methods="gradcam", size="input").grid == (8, 8)  # the layer's grid
    assert engine(x, methods="gradcam", size="input")["gradcam"].shape == (3, 16, 16)
    assert engine(x, methods="gradcam", size=(12, 20))["gradcam"].shape == (3, 12, 20)
    raw = engine(x, methods="gradcam", normalize=False)["gradcam"]
    assert raw.max() != pytest.approx(1.0) and raw.min() >= 0


def test_method_lookup_is_case_insensitive(tiny):
    model, x = tiny
    maps = CAMEngine(model, "features")(x, methods=["MeanDiffGradCAM++", "GradCAM"])
    assert list(maps) == ["meandiffgradcam++", "gradcam"]


def test_scalar_targets_broadcast(tiny):
    model, x = tiny
    engine = CAMEngine(model, "features")
    expected = engine(x, targets=[2, 2, 2])["gradcam"]
    for scalar in (2, np.int64(2), torch.tensor(2)):
        torch.testing.assert_close(engine(x, targets=scalar)["gradcam"], expected)


def test_default_targets_are_the_predicted_classes(tiny):
    model, x = tiny
    engine = CAMEngine(model, "features")
    result = engine.compute(x, methods="gradcam")
    torch.testing.assert_close(result.targets, model(x).argmax(1))
    torch.testing.assert_close(result.maps["gradcam"], engine(x, targets=result.targets)["gradcam"])


def test_constant_map_normalises_to_zeros_not_nan():
    out = minmax_normalize(torch.full((2, 4, 4), 3.0))
    assert torch.equal(out, torch.zeros(2, 4, 4))


def test_known_families_resolve_without_running_the_model():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=3)
    assert CAMEngine(model).target_layer == "layer4"


# ------------------------------------------------------------------ hygiene


def test_no_hooks_no_grads_mode_untouched(tiny):
    model, x = tiny
    model.train()
    engine = CAMEngine(model, "features")
    engine(x, methods=METHODS)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    model.eval()
    engine(x, methods="gradcam")
    assert not model.training


def test_hooks_removed_when_the_model_raises():
    class Broken(TinyNet):
        def forward(self, x):
            self.features(x)
            raise IndexError("boom")

    model = Broken()
    engine = CAMEngine(model, "features")
    with pytest.raises(IndexError, match="boom"):  # propagated, never swallowed
        engine(torch.randn(1, 3, 8, 8))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("context", [torch.inference_mode, torch.no_grad])
def test_works_under_inference_mode_and_no_grad(tiny, context):
    model, x = tiny
    expected = CAMEngine(model, "features")(x, methods=GRADIENT_METHODS)
    with context():
        x_inner = x.clone()  # an inference tensor under inference_mode
        maps = CAMEngine(model, "features")(x_inner, methods=GRADIENT_METHODS)
    for name in GRADIENT_METHODS:
        torch.testing.assert_close(maps[name], expected[name])


def test_frozen_parameters(tiny):
    model, x = tiny
    expected = CAMEngine(model, "features")(x, methods=("gradcam", "lsediffgradcam++"))
    model.requires_grad_(False)
    maps = CAMEngine(model, "features")(x, methods=("gradcam", "lsediffgradcam++"))
    for name in maps:
        torch.testing.assert_close(maps[name], expected[name])


def test_bf16_autocast_gives_float32_maps_close_to_fp32(tiny):
    model, x = tiny
    reference = CAMEngine(model, "features")(x, methods=METHODS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = CAMEngine(model, "features")(x, methods=METHODS)
    for name, cam in maps.items():
        assert cam.dtype == torch.float32 and torch.isfinite(cam).all(), name
        if name == "eigencam":
            continue  # a principal component's sign is arbitrary: bf16 noise may flip it
        # the forward runs in bf16 (~3 significant digits); the weighting and sums do not
        assert (cam - reference[name]).abs().mean() < 0.05, name


def test_create_graph_makes_maps_differentiable_wrt_parameters(tiny):
    model, x = tiny
    model.train()
    engine = CAMEngine(model, "features")
    plain = engine(x, methods=("gradcam", "lsediffgradcam"))
    result = engine.compute(x, methods=("gradcam", "lsediffgradcam"), create_graph=True)
    for name in plain:
        torch.testing.assert_close(result.maps[name], plain[name], atol=1e-6, rtol=0)
    loss = result.maps["gradcam"].pow(2).mean() + result.maps["lsediffgradcam"].mean()
    loss.backward()
    first_conv = model.features[0].weight.grad
    assert first_conv is not None and first_conv.abs().sum() > 0  # reaches the backbone
    assert model.head.weight.grad.abs().sum() > 0
    assert result.logits.requires_grad  # the same forward serves a CE loss


# ------------------------------------------------------------------ errors


def test_unknown_layer_names_it_and_suggests(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match=r"'featurs'.*Did you mean: features"):
        CAMEngine(model, "featurs")


def test_module_not_in_model():
    with pytest.raises(ValueError, match="not a submodule"):
        CAMEngine(TinyNet(), nn.Conv2d(1, 1, 1))


def test_unknown_method_lists_valid(tiny):
    model, x = tiny
    with pytest.raises(ValueError, match=r"'gradcamm'.*gradcam, gradcam\+\+, hirescam"):
        CAMEngine(model, "features")(x, methods="gradcamm")


def test_target_out_of_range(tiny):
    model, x = tiny
    with pytest.raises(ValueError, match=r"Target class 5 is out of range.*5 classes \(0\.\.4\)"):
        CAMEngine(model, "features")(x, targets=[0, 5, 1])
    with pytest.raises(ValueError, match="2 entries for a batch of 3"):
        CAMEngine(model, "features")(x, targets=[0, 1])


def test_non_4d_input(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match=r"4-D image batch.*\(3, 16, 16\)"):
        CAMEngine(model, "features")(torch.randn(3, 16, 16))


def test_layer_without_spatial_output(tiny):
    model, x = tiny
    with pytest.raises(ValueError, match=r"Target layer 'head' outputs \(3, 5\)"):
        CAMEngine(model, "head")(x)


def test_perturbation_batch_size_and_its_old_name(tiny):
    """``perturbation_batch_size`` (ScoreCAM's masks, AblationCAM's ablations) is also taken
    under its old name ``scorecam_batch_size``, which reads the same value back."""
    model, x = tiny
    new = CAMEngine(model, "features", perturbation_batch_size=7)
    old = CAMEngine(model, "features", scorecam_batch_size=7)
    assert new.perturbation_batch_size == old.perturbation_batch_size == old.scorecam_batch_size == 7
    for method in ("scorecam", "ablationcam"):
        torch.testing.assert_close(new(x, methods=method)[method], old(x, methods=method)[method])
    with pytest.raises(ValueError, match="disagree"):
        CAMEngine(model, "features", perturbation_batch_size=8, scorecam_batch_size=7)
    with pytest.raises(ValueError, match="perturbation_batch_size must be >= 1"):
        CAMEngine(model, "features", perturbation_batch_size=0)


def test_batch_coupling_is_checked_at_runtime_too(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="Unknown batch_coupling 'exactly'; valid: exact, batched"):
        CAMEngine(model, "features", batch_coupling="exactly")  # type: ignore[arg-type]


def test_unknown_names_reach_the_cli_with_their_message():
    """The CLI prints the innermost user error of the chain: a registry lookup must not
    carry the bare ``KeyError(name)`` it started from as its context."""
    from diffcam_lightning.errors import find_user_error, one_line

    with pytest.raises(ValueError) as method:
        get_method("gradcamx")
    with pytest.raises(KeyError) as target:
        BACKPROP_TARGETS["nope"]
    assert one_line(find_user_error(method.value)).startswith("Unknown CAM method 'gradcamx'. Valid methods: gradcam,")
    assert one_line(find_user_error(target.value)) == (
        "Unknown backprop target 'nope'; valid: logit, mean, max, lse, rest, softmax, finer."
    )


def test_output_key_models_give_the_same_head_reading_maps_as_the_bare_network():
    """With ``output_key`` the methods that run or read the model get the engine's
    ``LogitsView``; CAM reads the head through it (``outputs.unwrapped``) and ScoreCAM runs it."""
    import torchvision

    class DictOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torchvision.models.resnet18(weights=None, num_classes=5).eval()

        def forward(self, x):
            return {"logits": self.net(x), "aux": x.mean()}

    torch.manual_seed(0)
    model, x = DictOutput().eval(), torch.rand(2, 3, 64, 64)
    wrapped = CAMEngine(model, "net.layer4", output_key="logits")(x, None, ("cam", "scorecam"))
    bare = CAMEngine(model.net, "layer4")(x, None, ("cam", "scorecam"))
    for method in ("cam", "scorecam"):
        torch.testing.assert_close(wrapped[method], bare[method])

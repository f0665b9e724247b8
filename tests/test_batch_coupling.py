"""Train-mode BatchNorm after the CAM layer (issue 11, item 2): the batched VJP mixed the
images' gradients; the engine now gives exact per-image maps (checked against one
``autograd.grad`` per image) and says, once, that the forward still uses batch statistics."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from torch import nn

from diffcam_lightning import CAMEngine, SaliencyClassifier
from diffcam_lightning.cams.coupling import CouplingProbe, per_image_gradients
from diffcam_lightning.cams.postprocess import minmax_normalize
from diffcam_lightning.saliency import saliency_loss

torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.usefixtures("one_thread")


def per_image_reference(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: torch.Tensor, plus: bool = False):
    """GradCAM (or GradCAM++) of each image from its own ``autograd.grad(y_b[c_b], A)[b]``."""
    captured = {}
    handle = layer.register_forward_hook(lambda m, i, o: captured.setdefault("A", o))
    logits = model(x)
    handle.remove()
    acts = captured["A"]
    maps = []
    for b in range(x.shape[0]):
        (grad,) = torch.autograd.grad(logits[b, targets[b]], acts, retain_graph=True)
        g, a = grad[b], acts[b]
        if plus:
            g2, g3 = g.pow(2), g.pow(3)
            alpha = g2 / (2 * g2 + a.sum(dim=(1, 2), keepdim=True) * g3 + 1e-6)  # eps as methods.py
            alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
            weights = (alpha * torch.relu(g)).sum(dim=(1, 2))
        else:
            weights = g.mean(dim=(1, 2))
        maps.append(torch.relu((weights[:, None, None] * a).sum(0)))
    return minmax_normalize(torch.stack(maps).detach())


@pytest.fixture
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=6).train()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return model, x, torch.tensor([1, 2, 3, 4])


def test_train_mode_batchnorm_maps_equal_per_image_autograd(resnet):
    model, x, targets = resnet
    expected = {"gradcam": per_image_reference(model, model.layer3, x, targets)}
    expected["gradcam++"] = per_image_reference(model, model.layer3, x, targets, plus=True)
    engine = CAMEngine(model, "layer3")
    with pytest.warns(
        UserWarning, match=r"'layer4.0.bn1' \(BatchNorm2d\).*after target layer 'layer3'.*B times"
    ) as record:
        maps = engine(x, targets, ("gradcam", "gradcam++", "meandiffgradcam"))  # three backprop rows at once
        engine(x, targets, "gradcam")
    assert len([w for w in record if "CAMEngine" in str(w.message)]) == 1  # once per engine
    for name, reference in expected.items():
        diff = (maps[name] - reference).abs().max().item()
        assert diff <= 1e-5, f"{name}: {diff:.2e} from the per-image GradCAM"
    assert model.training


def test_the_batched_option_is_the_old_mixed_result_and_says_so(resnet):
    model, x, targets = resnet
    reference = per_image_reference(model, model.layer3, x, targets)
    with pytest.warns(UserWarning, match="batch_coupling='batched'"):
        mixed = CAMEngine(model, "layer3", batch_coupling="batched")(x, targets, "gradcam")["gradcam"]
    assert (mixed - reference).abs().max() > 0.1  # the mixing this issue is about


def test_exact_maps_stay_differentiable(resnet):
    model, x, targets = resnet
    engine = CAMEngine(model, "layer3")
    with pytest.warns(UserWarning, match="mix the images"):
        plain = engine(x, targets, "gradcam")["gradcam"]
    result = engine.compute(x, targets, "gradcam", create_graph=True)
    torch.testing.assert_close(result.maps["gradcam"], plain, atol=1e-5, rtol=0)
    result.maps["gradcam"].pow(2).mean().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0


def test_chunked_rows_equal_one_chunk(resnet):
    model, x, targets = resnet
    captured = {}
    handle = model.layer3.register_forward_hook(lambda m, i, o: captured.setdefault("A", o))
    logits = model(x)
    handle.remove()
    vectors = torch.nn.functional.one_hot(targets, 6).float()[None].repeat(2, 1, 1)
    whole = per_image_gradients(logits, captured["A"], vectors, create_graph=False)
    pieces = per_image_gradients(logits, captured["A"], vectors, create_graph=False, chunk_bytes=1)
    assert whole.shape == (2, 4, *captured["A"].shape[1:])
    torch.testing.assert_close(pieces, whole)


def test_no_warning_in_eval_mode_for_one_image_or_before_the_layer(resnet):
    model, x, targets = resnet
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CAMEngine(model, "layer3")(x[:1], targets[:1], "gradcam")  # one image: nothing to mix
        CAMEngine(model, "layer4")(x, targets, "gradcam")  # only pooling and fc follow layer4
        CAMEngine(model, "layer3")(x, targets, "eigencam")  # no gradient to mix
        CAMEngine(model.eval(), "layer3")(x, targets, "gradcam")


def test_eval_mode_without_running_statistics_is_coupled_too():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Flatten(), nn.LazyLinear(3)
    )
    model(torch.randn(2, 3, 6, 6))
    model.eval()
    with CouplingProbe(model, model[0]) as probe:
        model(torch.randn(2, 3, 6, 6))
    assert probe.after == ["1"]
    assert all(not m._forward_hooks for m in model.modules())


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="batch_coupling 'mean'.*exact, batched"):
        CAMEngine(nn.Sequential(nn.Conv2d(3, 4, 3)), batch_coupling="mean")


def test_saliency_classifier_loss_uses_exact_per_image_maps():
    """A non-final target layer of a BatchNorm network: in training the loss's maps are the
    per-image maps of the training forward (batch statistics), as documented."""
    L.seed_everything(0)
    module = SaliencyClassifier(
        model_name="test_resnet",
        num_classes=7,
        model_kwargs={"output_stride": 8},
        target_layer="layer3",
        saliency_target="sham",
    ).train()
    x, y = torch.randn(4, 3, 48, 48), torch.tensor([0, 1, 2, 3])
    expected = per_image_reference(module.model, module.model.layer3, x, y)
    with pytest.warns(UserWarning, match="after target layer 'layer3'"):
        result = module.cams(x, y, create_graph=True)
    assert (result.maps["gradcam"] - expected).abs().max() <= 1e-5
    assert result.maps["gradcam"].requires_grad
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*self.log.*")  # no Trainer attached
        loss = module.training_step({"image": x, "label": y}, 0)
    assert expected.shape[-2:] == (6, 6)
    sham = module.sham((6, 6)).expand_as(expected)
    sal, _ = saliency_loss(expected, sham, torch.ones(4, dtype=torch.bool))
    ce = torch.nn.functional.cross_entropy(result.logits, y)
    assert loss.item() == pytest.approx((ce + sal).item(), rel=1e-5)


def test_saliency_classifier_batched_option():
    module = SaliencyClassifier(
        model_name="test_resnet", num_classes=7, target_layer="layer3", batch_coupling="batched"
    )
    assert module.engine.batch_coupling == "batched" and module.hparams.batch_coupling == "batched"
    with pytest.warns(UserWarning, match="batch_coupling='batched'"):
        module.train().cams(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))

"""SaliencyClassifier: SHAM / human fits move GradCAM, the gradient path, CE-only
exactness, local weights, no NaN, validate/test under inference mode, DDP."""

import copy
import math
import warnings

import lightning as L
import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from diffcam_lightning import SaliencyClassifier, SyntheticDataModule
from diffcam_lightning.data import SyntheticShapes, SyntheticSpec
from diffcam_lightning.saliency import cam_mse, resize_target

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


TINY = {"model_name": "test_resnet", "model_kwargs": {"output_stride": 8}, "sham_entropy": 3.0}  # 48 px -> 6x6 grid


def adam(lr=0.005):
    return lambda params: torch.optim.Adam(params, lr=lr)


def make_model(**kw) -> SaliencyClassifier:
    torch.manual_seed(kw.pop("seed", 0))
    return SaliencyClassifier(**{**TINY, **kw})


def make_data(**kw) -> SyntheticDataModule:
    args = {"image_size": 48, "train_size": 320, "val_size": 64, "test_size": 32, "batch_size": 32}
    dm = SyntheticDataModule(**{**args, **kw})
    dm.setup("fit")
    return dm


def trainer(**kw) -> L.Trainer:
    args = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**args, **kw})


def held_out(model: SaliencyClassifier, dm: SyntheticDataModule) -> dict[str, float]:
    """GradCAM of the true class on the validation images vs the SHAM and the masks."""
    batch = next(iter(dm.val_dataloader()))
    was = model.training
    model.eval()
    res = model.engine.compute(batch["image"], targets=batch["label"], methods=("gradcam",))
    model.train(was)
    cam = res.maps["gradcam"]
    grid = tuple(cam.shape[-2:])
    return {
        "acc": (res.logits.argmax(1) == batch["label"]).float().mean().item(),
        "sham": cam_mse(cam, model.sham(grid)).mean().item(),
        "mask": cam_mse(cam, resize_target(batch["saliency"], grid)).mean().item(),
        # share of the CAM's mass on the object
        "inside": ((cam * (resize_target(batch["saliency"], grid) > 0.5)).sum((1, 2)) / cam.sum((1, 2)).clamp(min=1e-6))
        .mean()
        .item(),
    }


def test_sham_fit_pulls_gradcam_to_the_sham_and_keeps_accuracy():
    L.seed_everything(0)
    dm, model = make_data(), make_model(saliency_target="sham", optimizer=adam())
    before = held_out(model, dm)
    trainer(max_epochs=6, limit_val_batches=0).fit(model, dm)
    after = held_out(model, dm)
    assert model.sham((6, 6)).sum() == 20  # ln 20 <= 3.0 nats: the outer ring
    assert after["sham"] < 0.6 * before["sham"], (before, after)
    assert after["acc"] > 0.4  # chance is 1/7


def test_human_fit_raises_gradcam_agreement_with_object_masks():
    """Against a CE-only control with the same seed and steps: CE alone already moves
    GradCAM toward the class-deciding object, so only the difference measures the loss."""
    results = {}
    for weight in (0.0, 5.0):
        L.seed_everything(0)
        dm = make_data()
        model = make_model(saliency_target="human", saliency_weight=weight, optimizer=adam())
        before = held_out(model, dm)
        trainer(max_epochs=3, limit_val_batches=0).fit(model, dm)
        results[weight] = held_out(model, dm)
    human, ce_only = results[5.0], results[0.0]
    assert human["mask"] < 0.6 * ce_only["mask"] and human["mask"] < 0.3 * before["mask"], results
    assert human["inside"] > ce_only["inside"] + 0.1, results
    assert human["acc"] > 0.5


def _grads(model: SaliencyClassifier, batch) -> dict[str, torch.Tensor]:
    model.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        loss = model.training_step(batch, 0)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def batch():
    ds = SyntheticShapes(8, "train", SyntheticSpec(image_size=48))
    return next(iter(DataLoader(ds, batch_size=8)))


@pytest.mark.parametrize("method", ["gradcam", "meandiffgradcam++"])
@pytest.mark.parametrize("target", ["sham", "human"])
def test_saliency_gradient_reaches_the_backbone(batch, method, target):
    model = make_model(saliency_target=target, saliency_method=method, ce_weight=0.0, saliency_weight=1.0)
    grads = _grads(model, batch)
    first = grads["model.conv1.0.weight"]
    assert torch.isfinite(first).all() and first.abs().sum() > 0  # the stem, far below the CAM layer
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_ce_only_step_equals_a_plain_ce_step_exactly(batch):
    joint = make_model(saliency_weight=1.0)
    ce_only = make_model(saliency_weight=0.0)
    plain = copy.deepcopy(ce_only.model)
    g_ce = _grads(ce_only, batch)
    plain.zero_grad()
    F.cross_entropy(plain(batch["image"]), batch["label"]).backward()
    for name, p in plain.named_parameters():
        assert torch.equal(g_ce[f"model.{name}"], p.grad), name
    for name, p in ce_only.model.named_buffers():  # BatchNorm saw one forward, like the plain step
        assert torch.equal(p, dict(plain.named_buffers())[name]), name
    g_joint = _grads(joint, batch)
    assert not torch.equal(g_joint["model.conv1.0.weight"], g_ce["model.conv1.0.weight"])


class PlainCE(L.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.model(batch["image"]), batch["label"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.002, momentum=0.9)


def test_ce_only_fit_matches_plain_ce_fit_bit_for_bit():
    ours = make_model(saliency_weight=0.0)  # default optimizer: SGD lr 0.002, momentum 0.9
    plain = PlainCE(copy.deepcopy(ours.model))
    for module in (ours, plain):
        L.seed_everything(1)
        trainer(max_steps=3, limit_val_batches=0).fit(module, make_data(train_size=96))
    for (name, a), b in zip(ours.model.state_dict().items(), plain.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_validate_and_test_log_finite_figures_under_inference_mode():
    dm, model = make_data(val_size=32), make_model(saliency_target="sham")
    t = trainer(limit_val_batches=1, limit_test_batches=1)
    (val,) = t.validate(model, dm)
    (test,) = t.test(model, dm)
    for key in ("acc", "ce", "loss", "saliency_mse", "cam_entropy", "sham_mse", "saliency_missing"):
        assert math.isfinite(val[f"val/{key}"]) and math.isfinite(test[f"test/{key}"]), key
    assert 0 < val["val/cam_entropy"] <= math.log(36) + 1e-5
    assert val["val/saliency_mse"] == pytest.approx(val["val/sham_mse"])
    assert not any(p.grad is not None for p in model.parameters())


class HalfAnnotated(torch.utils.data.Dataset):
    """Odd samples have no human map (has_saliency False, zero map)."""

    def __init__(self, n=16):
        self.base = SyntheticShapes(n, "train", SyntheticSpec(image_size=48))

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        s = dict(self.base[i])
        if i % 2:
            s["saliency"], s["has_saliency"] = torch.zeros_like(s["saliency"]), torch.tensor(False)
        return s


def test_human_mode_leaves_out_and_counts_samples_without_maps(batch):
    model = make_model(saliency_target="human")
    t = trainer(max_epochs=1, limit_val_batches=0)
    t.fit(model, DataLoader(HalfAnnotated(16), batch_size=8))
    assert t.callback_metrics["train/saliency_missing"].item() == 8
    assert torch.isfinite(t.callback_metrics["train/saliency_mse"])
    # a batch with no map at all: the loss is exactly the CE, not NaN
    none = {**batch, "has_saliency": torch.zeros(8, dtype=torch.bool)}
    model = make_model(saliency_target="human").eval()  # fixed BN statistics so both forwards agree
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = model.training_step(none, 0)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(F.cross_entropy(model(batch["image"]), batch["label"]).item(), rel=1e-5)


def test_constant_cam_gives_no_nan(batch):
    model = make_model(saliency_target="sham")
    with torch.no_grad():
        model.model.fc.weight.zero_()
        model.model.fc.bias.zero_()  # every logit 0: GradCAM is a constant (zero) map
    grads = _grads(model, batch)
    assert all(torch.isfinite(g).all() for g in grads.values())
    cam = model.cams(batch["image"], batch["label"]).maps["gradcam"]
    assert torch.equal(cam, torch.zeros_like(cam))


def test_cam_class_prediction_explains_the_predicted_class(batch):
    model = make_model(cam_class="prediction").eval()
    res = model.cams(batch["image"], batch["label"])
    assert torch.equal(res.targets, res.logits.argmax(1))
    res = make_model(cam_class="label").eval().cams(batch["image"], batch["label"])
    assert torch.equal(res.targets, batch["label"])


def test_local_weights_file(tmp_path):
    source = make_model(seed=5, num_classes=7).model
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    same = SaliencyClassifier(**{**TINY, "weights_file": str(path), "num_classes": 7}).model
    for (name, a), b in zip(source.state_dict().items(), same.state_dict().values()):
        assert torch.equal(a, b), name
    other = SaliencyClassifier(**{**TINY, "weights_file": str(path), "num_classes": 3}).model
    assert other.fc.out_features == 3  # the classifier is re-initialised for 3 classes
    assert torch.equal(other.conv1[0].weight, source.conv1[0].weight)  # the backbone is loaded
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        SaliencyClassifier(**{**TINY, "weights_file": str(tmp_path / "nope.pth")})


def test_errors_name_the_bad_choice_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"resnet5O.*Did you mean.*resnet50"):
        SaliencyClassifier(model_name="resnet5O")
    with pytest.raises(ValueError, match=r"gradient to train through\): eigencam cannot be used here; valid: gradcam"):
        SaliencyClassifier(**{**TINY, "saliency_method": "eigencam"})
    with pytest.raises(ValueError, match=r"saliency_target 'human2'.*valid: human, sham"):
        SaliencyClassifier(**{**TINY, "saliency_target": "human2"})
    with pytest.raises(ValueError, match=r"cam_class 'truth'.*label, prediction"):
        SaliencyClassifier(**{**TINY, "cam_class": "truth"})
    with pytest.raises(ValueError, match=r"gradcam3.*Valid methods"):
        SaliencyClassifier(**{**TINY, "saliency_method": "gradcam3"})


def test_ddp_spawn_two_cpu_processes_fit_the_joint_loss():
    model = make_model(saliency_target="sham")
    start = model.model.conv1[0].weight.detach().clone()
    t = trainer(
        strategy="ddp_spawn",
        devices=2,
        max_epochs=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    t.fit(model, make_data(train_size=32, val_size=16, batch_size=8))  # 2 steps per process
    metrics = t.callback_metrics
    assert math.isfinite(metrics["train/loss"].item()) and math.isfinite(metrics["val/saliency_mse"].item())
    assert not torch.equal(model.model.conv1[0].weight, start)  # the trained weights came back


def test_a_sham_covering_the_whole_grid_is_flagged():
    model = make_model(saliency_target="sham", sham_entropy=3.35)
    with pytest.warns(UserWarning, match=r"covers every pixel of the 4x4 CAM grid"):
        model.sham((4, 4))
    assert model.sham((8, 8)).sum() == 28  # the outer ring of an 8x8 grid: no warning needed


def test_bf16_mixed_precision_fit_logs_finite_values():
    L.seed_everything(0)
    model = make_model(saliency_target="sham")
    t = trainer(max_epochs=1, precision="bf16-mixed", limit_train_batches=2, limit_val_batches=1)
    t.fit(model, make_data(train_size=32, val_size=16, batch_size=16))
    assert t.callback_metrics and all(torch.isfinite(v).all() for v in t.callback_metrics.values())
    assert all(p.dtype == torch.float32 for p in model.parameters())

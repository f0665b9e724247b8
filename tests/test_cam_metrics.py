"""CAM metrics: parity with torchcam 0.5 and pytorch-grad-cam 1.5.7 on the same model, maps
and input; properties (deletion prefers the true object, the sanity check's correlation
falls as layers are randomised); clear errors."""

from __future__ import annotations

import contextlib
from functools import partial

import numpy as np
import pytest
import timm
import torch
from torch import nn

from diffcam_lightning import CAMEngine
from diffcam_lightning.cams import metrics as M
from diffcam_lightning.data.synthetic import SyntheticShapes, SyntheticSpec

torchcam_metrics = pytest.importorskip("torchcam.metrics")
pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange, DropInConfidence, IncreaseInConfidence  # noqa: E402
from pytorch_grad_cam.metrics.perturbation_confidence import (  # noqa: E402
    AveragerAcrossThresholds,
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),  # see conftest.py
    # pytorch-grad-cam's metrics call np.float32 on a list of arrays (numpy 2 deprecation, their code)
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]


class FixedMaps:
    """A torchcam CAM extractor that returns given maps: both libraries score the same maps."""

    def __init__(self, model: nn.Module, maps: torch.Tensor) -> None:
        self.model, self.maps = model, maps

    def __call__(self, class_idx=None, scores=None, **kwargs):
        return [self.maps]

    def fuse_cams(self, cams):
        return cams[0]

    @contextlib.contextmanager
    def _hooks_off(self):
        yield


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    x = torch.randn(3, 3, 40, 40)
    targets = torch.tensor([1, 4, 7])
    maps = CAMEngine(model)(x, targets=targets, methods=("gradcam", "layercam"))
    return model, x, targets, maps


@pytest.mark.parametrize("baseline", [None, 0.3])
@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_deletion_insertion_match_torchcam(case, method, baseline):
    model, x, targets, maps = case
    ours = M.deletion_insertion(model, x, maps[method], targets, steps=7, baseline=baseline, batch_size=5)
    for i in range(len(x)):  # torchcam sums per update; one sample per update gives per-sample AUCs
        ref = torchcam_metrics.DeletionInsertionMetric(
            FixedMaps(model, maps[method][i : i + 1]),
            partial(torch.softmax, dim=-1),
            steps=7,
            baseline=None if baseline is None else torch.tensor(baseline),
        )
        ref.update(x[i : i + 1], class_idx=[int(targets[i])])
        summary = ref.summary()
        assert abs(summary["deletion_auc"] - float(ours["deletion"][i])) <= 1e-4
        assert abs(summary["insertion_auc"] - float(ours["insertion"][i])) <= 1e-4


def test_average_drop_and_increase_match_torchcam(case):
    model, x, targets, maps = case
    ours = M.confidence(model, x, maps["gradcam"], targets, score="softmax")
    ref = torchcam_metrics.ClassificationMetric(FixedMaps(model, maps["gradcam"]), partial(torch.softmax, dim=-1))
    ref.update(x, class_idx=targets.tolist())
    summary = ref.summary()
    assert abs(summary["avg_drop"] - ours["average_drop"].mean().item()) <= 1e-4
    assert abs(summary["conf_increase"] - ours["increase_in_confidence"].mean().item()) <= 1e-4


@pytest.mark.parametrize(
    "score,target_class", [("logit", ClassifierOutputTarget), ("softmax", ClassifierOutputSoftmaxTarget)]
)
def test_confidence_metrics_match_pytorch_grad_cam(case, score, target_class):
    model, x, targets, maps = case
    up = M.to_input_size(maps["gradcam"], x.shape[-2:])
    ours = M.confidence(model, x, maps["gradcam"], targets, score=score)
    cam_targets = [target_class(int(t)) for t in targets]
    for name, ref in (
        ("drop_in_confidence", DropInConfidence()),
        ("increase_in_confidence", IncreaseInConfidence()),
        ("confidence_change", CamMultImageConfidenceChange()),
    ):
        expected = np.asarray(ref(x, up.numpy(), cam_targets, model)).reshape(-1)
        np.testing.assert_allclose(ours[name].numpy(), expected, atol=1e-4, err_msg=name)


def test_road_matches_pytorch_grad_cam_without_noise(case):
    """ROAD's imputation is random (noise 0.01 by default); without noise both are exact."""
    model, x, targets, maps = case
    percentiles = (20, 50, 80)
    up = M.to_input_size(maps["layercam"], x.shape[-2:])
    cam_targets = [ClassifierOutputTarget(int(t)) for t in targets]
    ours = M.road(model, x, maps["layercam"], targets, percentiles=percentiles, noise=0.0)  # sparse LU on a CPU
    cg = M.road(model, x, maps["layercam"], targets, percentiles=percentiles, noise=0.0, solver="cg")
    expected = {}
    for name, order in (("road_morf", RemoveMostRelevantFirst), ("road_lerf", RemoveLeastRelevantFirst)):
        averager = AveragerAcrossThresholds(
            lambda p, order=order: PerturbationConfidenceMetric(order(p, NoisyLinearImputer(noise=0))), percentiles
        )
        expected[name] = averager(x, up.numpy(), cam_targets, model)
        np.testing.assert_allclose(ours[name].numpy(), expected[name], atol=1e-4, err_msg=name)
        np.testing.assert_allclose(cg[name].numpy(), expected[name], atol=1e-4, err_msg=f"{name} (cg)")
    combined = (expected["road_lerf"] - expected["road_morf"]) / 2  # ROADCombined's formula
    np.testing.assert_allclose(ours["road_combined"].numpy(), combined, atol=1e-4)


def test_road_noise_is_seeded_and_only_on_removed_pixels():
    x = torch.randn(2, 3, 12, 12)
    keep = torch.rand(2, 12, 12) > 0.5
    a = M.noisy_linear_impute(x, keep, noise=0.01, generator=torch.Generator().manual_seed(1))
    b = M.noisy_linear_impute(x, keep, noise=0.01, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[keep[:, None].expand_as(a)], x[keep[:, None].expand_as(x)])


def test_relevance_mass_and_rank_by_hand():
    maps = torch.tensor([[[4.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [2.0, 3.0]]])
    masks = torch.tensor([[[1, 0], [0, 0]], [[1, 1], [0, 0]]])
    torch.testing.assert_close(M.relevance_mass(maps, masks), torch.tensor([0.8, 1 / 6]))
    # top-1 of map 0 is inside; top-2 of map 1 are (1, 1) and (1, 0): none inside
    torch.testing.assert_close(M.relevance_rank(maps, masks), torch.tensor([1.0, 0.0]))


def test_relevance_resizes_maps_to_the_masks():
    maps = torch.zeros(1, 2, 2)
    maps[0, 0, 0] = 1.0
    masks = torch.zeros(1, 8, 8)
    masks[0, :4, :4] = 1
    assert M.relevance_mass(maps, masks).item() > 0.75  # bilinear spreads ~1/4 of the mass outside
    assert M.relevance_rank(maps, masks).item() == 1.0


def test_spearman_matches_scipy_with_ties():
    scipy_stats = pytest.importorskip("scipy.stats")
    torch.manual_seed(0)
    a = torch.relu(torch.randn(3, 7, 7))  # many ties at zero
    b = torch.relu(torch.randn(3, 7, 7))
    ours = M.spearman(a, b)
    for i in range(3):
        expected = scipy_stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert abs(float(ours[i]) - expected) <= 1e-5


def _trained_synthetic_model():
    """A small CNN trained a few epochs on the embedded data (it must use the object)."""
    torch.manual_seed(0)
    spec = SyntheticSpec(image_size=32)
    data = SyntheticShapes(420, "train", spec)
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    labels = torch.stack([data[i]["label"] for i in range(len(data))])
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 7),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(12):
        for i in range(0, len(images), 35):
            loss = nn.functional.cross_entropy(model(images[i : i + 35]), labels[i : i + 35])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), spec


def test_deletion_prefers_the_true_object_to_its_inverse():
    model, spec = _trained_synthetic_model()
    test = SyntheticShapes(28, "test", spec)
    x = torch.stack([test[i]["image"] for i in range(len(test))])
    labels = torch.stack([test[i]["label"] for i in range(len(test))])
    masks = torch.stack([test[i]["saliency"] for i in range(len(test))])
    with torch.no_grad():
        assert (model(x).argmax(1) == labels).float().mean() > 0.6  # it learned the task
    good = M.deletion_insertion(model, x, masks, labels, steps=10, batch_size=64)
    bad = M.deletion_insertion(model, x, 1 - masks, labels, steps=10, batch_size=64)
    assert good["deletion"].mean() < bad["deletion"].mean()
    assert good["insertion"].mean() > bad["insertion"].mean()
    assert M.relevance_mass(masks, masks).min() == 1.0 and M.relevance_rank(1 - masks, masks).max() == 0.0


def test_sanity_check_correlation_falls_as_layers_are_randomised():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = ["fc", "layer4.1.conv2", "layer3.0.conv1", "layer1.0.conv1", "conv1"]
    result = M.randomization_check(model, x, "gradcam", targets=torch.tensor([2, 5]), layers=layers, mode="cascading")
    assert result.layers == layers and result.correlation.shape == (5, 2)
    mean = result.correlation.mean(dim=1)
    assert mean[-1] < mean[0] - 0.2, mean  # all randomised: far from the first step
    assert mean[-1] < 0.5, mean
    for k, v in model.state_dict().items():  # the model itself is untouched
        torch.testing.assert_close(v, before[k])
    single = M.randomization_check(
        model, x, "gradcam", targets=torch.tensor([2, 5]), layers=["conv1"], mode="independent"
    )
    assert single.correlation.shape == (1, 2)


def test_evaluate_runs_each_group_once_and_keeps_order(case):
    model, x, targets, maps = case
    out = M.evaluate(["insertion", "average_drop", "deletion"], model, x, maps["gradcam"], targets, steps=5)
    assert list(out) == ["insertion", "average_drop", "deletion"]
    direct = M.deletion_insertion(model, x, maps["gradcam"], targets, steps=5)
    torch.testing.assert_close(out["deletion"], direct["deletion"])


def test_bad_input_names_the_value_and_the_choices(case):
    model, x, targets, maps = case
    with pytest.raises(ValueError, match=r"Unknown CAM metric 'pointing'.*deletion, insertion"):
        M.check_metrics(["deletion", "pointing"])
    with pytest.raises(ValueError, match=r"steps must be an integer >= 1; got 0"):
        M.deletion_insertion(model, x, maps["gradcam"], targets, steps=0)
    with pytest.raises(ValueError, match=r"masks must be \[B, H, W\] with B = 3.*got \(2, 40, 40\)"):
        M.relevance_mass(maps["gradcam"], torch.ones(2, 40, 40))
    with pytest.raises(ValueError, match=r"maps must be \[B, h, w\] with B = 3"):
        M.road(model, x, maps["gradcam"][:2], targets)
    with pytest.raises(ValueError, match=r"Unknown score 'prob'; valid: softmax, logit"):
        M.confidence(model, x, maps["gradcam"], targets, score="prob")
    with pytest.raises(ValueError, match=r"masks \[1\] are empty"):
        M.relevance_rank(maps["gradcam"], torch.stack([torch.ones(40, 40), torch.zeros(40, 40), torch.ones(40, 40)]))
    with pytest.raises(ValueError, match=r"need masks"):
        M.evaluate(["relevance_mass"], model, x, maps["gradcam"], targets)
    with pytest.raises(ValueError, match=r"Unknown sanity-check mode 'random'; valid: cascading, independent"):
        M.randomization_check(model, x, mode="random")


def test_road_solvers_agree():
    """Conjugate gradients (any device) and sparse LU (CPU) solve the same system."""
    torch.manual_seed(0)
    x = torch.randn(3, 3, 20, 20)
    keep = torch.rand(3, 20, 20) > 0.6
    keep[0] = True  # nothing to impute
    keep[1, 2:15, 3:18] = False  # a large hole
    cg = M.noisy_linear_impute(x, keep, noise=0.0, solver="cg")
    direct = M.noisy_linear_impute(x, keep, noise=0.0, solver="direct")
    torch.testing.assert_close(cg, direct, atol=1e-5, rtol=0)
    torch.testing.assert_close(direct[0], x[0])
    with pytest.raises(ValueError, match=r"Unknown ROAD solver 'lu'; valid: auto, cg, direct"):
        M.noisy_linear_impute(x, keep, solver="lu")


# ---------------------------------------------------------------- issue 21: no silently wrong score


def _bn_net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )


def test_metrics_run_in_eval_mode_restore_every_flag_and_do_not_depend_on_batch_size():
    """After a fit the model is in train mode: a score must not depend on the metric's batch
    (BatchNorm batch statistics, dropout) nor move running statistics; a frozen (eval)
    submodule inside a train-mode model stays in eval mode."""
    model = _bn_net().train()
    model[1].eval()  # a frozen BatchNorm inside a training model
    x, maps = torch.randn(3, 3, 12, 12), torch.rand(3, 12, 12)
    targets = torch.tensor([0, 2, 4])
    modes = {n: m.training for n, m in model.named_modules()}
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    names = ["deletion", "insertion", "road_morf", "average_drop"]
    small = M.evaluate(names, model, x, maps, targets, steps=4, batch_size=1, percentiles=(50,), noise=0.0)
    large = M.evaluate(names, model, x, maps, targets, steps=4, batch_size=64, percentiles=(50,), noise=0.0)
    for name in names:
        torch.testing.assert_close(small[name], large[name], msg=name)
    M.class_scores(model, x, targets)
    assert {n: m.training for n, m in model.named_modules()} == modes
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, stats[k], msg=k)


@pytest.mark.parametrize("name", ["deletion", "insertion", "road_combined", "average_drop", "confidence_change"])
def test_scores_of_non_finite_maps_are_nan_and_the_others_unchanged(case, name):
    model, x, targets, maps = case
    cam = maps["gradcam"].clone()
    broken = cam.clone()
    broken[1, 1, 0] = float("nan")
    broken[2, 0, 0] = float("inf")
    options = {"steps": 4, "percentiles": (50,), "noise": 0.0}
    clean = M.evaluate(
        [name], model, x, cam, targets, **{k: v for k, v in options.items() if k in M.accepted_options([name])}
    )
    ours = M.evaluate(
        [name], model, x, broken, targets, **{k: v for k, v in options.items() if k in M.accepted_options([name])}
    )
    assert torch.isnan(ours[name][1:]).all(), ours[name]
    torch.testing.assert_close(ours[name][0], clean[name][0])


def test_mask_scores_of_non_finite_maps_are_nan():
    maps = torch.rand(2, 6, 6)
    maps[0, 1, 1] = float("nan")
    masks = torch.zeros(2, 6, 6)
    masks[:, :3] = 1
    assert torch.isnan(M.relevance_mass(maps, masks)[0]) and torch.isfinite(M.relevance_mass(maps, masks)[1])
    assert torch.isnan(M.relevance_rank(maps, masks)[0]) and torch.isfinite(M.relevance_rank(maps, masks)[1])


def test_relevance_rank_gives_ties_fractional_credit():
    blank = torch.zeros(2, 7, 7)
    masks = torch.zeros(2, 7, 7)
    masks[0, :2] = 1  # top rows
    masks[1, -2:] = 1  # bottom rows: same size, a blank map must score the same
    share = 14 / 49
    torch.testing.assert_close(M.relevance_rank(blank, masks), torch.tensor([share, share]))
    # two pixels tied at the K-th place (K = 2): one above, the tie pair shares one place
    maps = torch.tensor([[[3.0, 1.0], [1.0, 0.0]]])
    mask = torch.tensor([[[0, 1], [1, 0]]])
    torch.testing.assert_close(M.relevance_rank(maps, mask), torch.tensor([0.5]))
    mask = torch.tensor([[[1, 1], [0, 0]]])
    torch.testing.assert_close(M.relevance_rank(maps, mask), torch.tensor([0.75]))


def test_an_option_no_chosen_metric_takes_is_an_error_naming_it(case):
    model, x, targets, maps = case
    with pytest.raises(
        ValueError, match=r"\['stpes'\] are taken by none of the metrics \['deletion'\]; valid: steps, baseline"
    ):
        M.evaluate(["deletion"], model, x, maps["gradcam"], targets, stpes=2)
    with pytest.raises(ValueError, match=r"\['steps'\].*\['road_morf'\]; valid: percentiles"):
        M.evaluate(["road_morf"], model, x, maps["gradcam"], targets, steps=2)


@pytest.mark.filterwarnings("ignore:CAMEngine.*train-mode BatchNorm")  # today's code warns (and moves statistics)
def test_sanity_check_runs_a_train_mode_model_in_eval_mode_and_restores_it():
    model = _bn_net().train()
    model[1].eval()
    modes = {n: m.training for n, m in model.named_modules()}
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 12, 12)
    first = M.randomization_check(
        model, x, "gradcam", targets=torch.tensor([1, 3]), target_layer="4", layers=["9", "4"]
    )
    again = M.randomization_check(
        model, x[:1], "gradcam", targets=torch.tensor([1]), target_layer="4", layers=["9", "4"]
    )
    torch.testing.assert_close(first.correlation[:, :1], again.correlation)  # independent of the batch
    assert {n: m.training for n, m in model.named_modules()} == modes
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, stats[k], msg=k)


def test_metric_registries_are_registries_listed_in_family_order_and_refuse_a_taken_name():
    from diffcam_lightning.registry import Registry

    assert all(isinstance(r, Registry) for r in (M.METRICS, M.GROUPS, M.MASK_METRICS))
    families = [spec.family for spec in M.METRICS.values()]
    assert families == sorted(
        families, key=("faithfulness", "randomisation", "localisation", "complexity", "robustness").index
    )
    before = (list(M.METRICS), list(M.GROUPS))
    spec = M.MetricSpec("my_group", "higher", family="complexity")
    with pytest.raises(ValueError, match=r"CAM metrics \['deletion'\] are already registered"):
        M.register_group("my_group", lambda maps: {"deletion": maps}, {"deletion": spec, "mine": spec})
    with pytest.raises(ValueError, match="better must be 'higher' or 'lower'"):
        M.register_group("my_group", lambda maps: {"mine": maps}, {"mine": M.MetricSpec("my_group", "up")})  # type: ignore[arg-type]
    assert (list(M.METRICS), list(M.GROUPS)) == before  # a refused call registers nothing
    M.register_group("my_group", lambda maps: {"mine": maps.flatten(1).sum(dim=1)}, {"mine": spec})
    try:
        names = list(M.METRICS)  # registered last, listed with its family: after complexity, before robustness
        assert names.index("complexity") + 1 == names.index("mine") < names.index("max_sensitivity")
        out = M.evaluate("mine", nn.Identity(), torch.zeros(1, 1, 2, 2), torch.ones(1, 2, 2), torch.zeros(1))
        torch.testing.assert_close(out["mine"], torch.tensor([4.0]))
    finally:
        M.METRICS.unregister("mine")
        M.GROUPS.unregister("my_group")
    assert (list(M.METRICS), list(M.GROUPS)) == before

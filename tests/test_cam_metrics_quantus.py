"""The Quantus-family metrics of ``cams.metrics``: each equal to Quantus 0.6 on a tiny CNN
and 3 images, at the same perturbation draws (explicit indices / seeds on both sides).

Quantus normalises maps and computes fill values over the whole batch it is given; ours
are per image, so Quantus runs with ``normalise_axes=(1, 2, 3)`` or one image at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from diffcam_lightning.cams import metrics as M

quantus = pytest.importorskip("quantus")

pytestmark = [
    pytest.mark.usefixtures("one_thread"),  # see conftest.py
    pytest.mark.filterwarnings("ignore::UserWarning:quantus"),  # Quantus's own parameterisation notes
    pytest.mark.filterwarnings("ignore::DeprecationWarning:quantus"),
    # pytorch-grad-cam's ROAD calls np.float32 on a list of arrays (numpy 2 deprecation, their code)
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]
PER_IMAGE = {"normalise_func_kwargs": {"normalise_axes": (1, 2, 3)}, "disable_warnings": True}


@pytest.fixture(autouse=True)
def _numpy_trapz(monkeypatch):
    """Quantus 0.6 integrates with np.trapz, removed in NumPy 2.4 (np.trapezoid is the same)."""
    if not hasattr(np, "trapz"):
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)


def tiny_cnn(seed: int = 0, channels: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 6),
    ).eval()


@pytest.fixture(scope="module")
def case():
    model = tiny_cnn()
    torch.manual_seed(1)
    x = torch.rand(3, 3, 20, 20)
    maps = torch.rand(3, 20, 20)  # distinct values: no ties, whose order Quantus leaves to numpy's quicksort
    targets = torch.tensor([1, 3, 5])
    return model, x, maps, targets


def quantus_scores(metric, model, x, maps, targets, one_at_a_time=False, **call) -> np.ndarray:
    def run(sl):
        return np.asarray(
            metric(
                model=model,
                x_batch=x[sl].numpy(),
                y_batch=targets[sl].numpy(),
                a_batch=maps[sl, None].numpy(),
                device="cpu",
                **call,
            ),
            dtype=np.float64,
        )

    if one_at_a_time:
        return np.concatenate([run(slice(i, i + 1)) for i in range(len(x))])
    return run(slice(None))


@pytest.mark.parametrize("baseline", ["black", 0.25])
def test_pixel_flipping_matches_quantus(case, baseline):
    _, _, maps, targets = case
    model, x = tiny_cnn(channels=2), torch.rand(3, 2, 20, 20, generator=torch.Generator().manual_seed(2))
    # whole pixels per step (2 channels x 20) that divide H*W, as Quantus requires: the order among a
    # pixel's channel copies is a tie, left to numpy's quicksort there
    step = 2 * 20
    ref = quantus.PixelFlipping(features_in_step=step, perturb_baseline=baseline, **PER_IMAGE)
    curves = quantus_scores(ref, model, x, maps, targets, one_at_a_time=True)
    ours = M.pixel_flipping(model, x, maps, targets, features_in_step=step, baseline=baseline, batch_size=7)
    np.testing.assert_allclose(ours["pixel_flipping"].numpy(), np.trapezoid(curves, axis=1), atol=1e-4)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_region_perturbation_matches_quantus(case, order):
    model, x, maps, targets = case  # 20 px with 8 px patches: Quantus pads 2 + 2
    ref = quantus.RegionPerturbation(patch_size=8, regions_evaluation=6, order=order, **PER_IMAGE)
    curves = quantus_scores(ref, model, x, maps, targets, one_at_a_time=True).reshape(len(x), -1)
    ours = M.region_perturbation(model, x, maps, targets, patch_size=8, regions=6, order=order, batch_size=5)
    np.testing.assert_allclose(ours["region_perturbation"].numpy(), curves.mean(axis=1), atol=1e-5)


def test_irof_matches_quantus(case):
    model, x, maps, targets = case
    from quantus.functions.perturb_func import baseline_replacement_by_mask

    def by_mask(arr, mask, **kwargs):  # Quantus 0.6's IROF passes a [B, 1, H, W] mask for [B, C, H, W] images
        return baseline_replacement_by_mask(arr, np.broadcast_to(mask, arr.shape), **kwargs)

    ref = quantus.IROF(return_aggregate=False, perturb_func=by_mask, **PER_IMAGE)
    expected = quantus_scores(ref, model, x, maps, targets, one_at_a_time=True)
    ours = M.irof(model, x, maps, targets, batch_size=16)
    np.testing.assert_allclose(ours["irof"].numpy(), expected, atol=1e-4)
    segments = M.slic_segments(x)
    torch.testing.assert_close(M.irof(model, x, maps, targets, segments=segments)["irof"], ours["irof"])


def replay(monkeypatch, name: str, values: list) -> list:
    """numpy.random.<name> returns ``values`` in order (Quantus draws through the global numpy RNG)."""
    calls = []

    def fake(*args, **kwargs):
        calls.append(kwargs.get("size", args[1:]))
        return values[len(calls) - 1]

    monkeypatch.setattr(np.random, name, fake)
    return calls


def test_faithfulness_correlation_matches_quantus_at_the_same_subsets(case, monkeypatch):
    model, x, maps, targets = case
    runs, size, n = 12, 50, 3 * 20 * 20
    rng = np.random.default_rng(0)
    subsets = rng.permuted(np.tile(np.arange(n), (len(x), runs, 1)), axis=2)[..., :size]  # [B, runs, size]
    calls = replay(monkeypatch, "choice", [subsets[b, r] for r in range(runs) for b in range(len(x))])
    ref = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size, return_aggregate=False, **PER_IMAGE)
    expected = quantus_scores(ref, model, x, maps, targets)
    assert len(calls) == runs * len(x)
    monkeypatch.undo()
    ours = M.faithfulness_correlation(model, x, maps, targets, subsets=torch.from_numpy(subsets), batch_size=8)
    np.testing.assert_allclose(ours["faithfulness_correlation"].numpy(), expected, atol=1e-4)
    seeded = M.faithfulness_correlation(model, x, maps, targets, runs=runs, subset_size=size, seed=3)
    torch.testing.assert_close(
        seeded, M.faithfulness_correlation(model, x, maps, targets, runs=runs, subset_size=size, seed=3)
    )


def test_monotonicity_correlation_matches_quantus_at_the_same_fills(case, monkeypatch):
    _, _, maps, targets = case
    model, x = tiny_cnn(channels=2), torch.rand(3, 2, 20, 20, generator=torch.Generator().manual_seed(2))
    step, samples = 2 * 20, 3  # whole pixels that divide H*W (see the pixel flipping test)
    steps = 2 * 400 // step
    fills = np.random.default_rng(1).uniform(size=(len(x), steps, samples))
    replay(monkeypatch, "uniform", [fills[:, k, s] for k in range(steps) for s in range(samples)])
    ref = quantus.MonotonicityCorrelation(features_in_step=step, nr_samples=samples, **PER_IMAGE)
    expected = quantus_scores(ref, model, x, maps, targets)
    monkeypatch.undo()
    ours = M.monotonicity_correlation(
        model, x, maps, targets, features_in_step=step, fills=torch.from_numpy(fills), batch_size=32
    )
    np.testing.assert_allclose(ours["monotonicity_correlation"].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("name,cls", [("sparseness", "Sparseness"), ("complexity", "Complexity")])
def test_complexity_metrics_match_quantus(case, name, cls):
    model, x, maps, targets = case
    signed = maps - 0.3  # negative values: both take |map| after normalising
    signed[1, :10] = 0.0  # a half-blank map
    ref = getattr(quantus, cls)(**PER_IMAGE)
    expected = quantus_scores(ref, model, x, signed, targets)
    np.testing.assert_allclose(getattr(M, name)(signed).numpy(), expected, atol=1e-5)
    small = torch.nn.functional.avg_pool2d(signed[:, None], 2).squeeze(1)  # a coarser map, scored at the input's size
    up = M.to_input_size(small, x.shape[-2:])
    np.testing.assert_allclose(
        getattr(M, name)(small, size=x.shape[-2:]).numpy(), quantus_scores(ref, model, x, up, targets), atol=1e-5
    )


def test_ssim_rows_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 50, generator=g), torch.rand(3, 50, generator=g)
    b[2] = a[2] * 0.5 + 0.1
    for i in range(3):
        r = float(max(a[i].max(), b[i].max()) - min(a[i].min(), b[i].min()))
        expected = metrics.structural_similarity(a[i].double().numpy(), b[i].double().numpy(), data_range=r)
        assert abs(float(M.ssim_rows(a, b)[i]) - expected) < 1e-10


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_random_logit_matches_quantus(case, method):
    from diffcam_lightning import CAMEngine

    model, x, _, targets = case
    engine = CAMEngine(model, "2")

    def explain(x, t):
        return engine(x, targets=t, methods=method, size="input")[method]

    def quantus_explain(model, inputs, targets, **kwargs):
        return explain(torch.from_numpy(inputs), torch.from_numpy(np.asarray(targets)))[:, None].numpy()

    maps = explain(x, targets)
    ref = quantus.RandomLogit(num_classes=6, seed=42, **PER_IMAGE)
    expected = quantus_scores(ref, model, x, maps, targets, explain_func=quantus_explain)
    ours = M.random_logit(model, x, maps, targets, explain=explain)
    np.testing.assert_allclose(ours["random_logit"].numpy(), expected, atol=1e-5)
    others = M.random_other_classes(targets, 6)
    assert (others != targets).all() and ((others >= 0) & (others < 6)).all()
    via = M.evaluate(["random_logit"], model, x, maps, targets, explain=explain)
    torch.testing.assert_close(via["random_logit"], ours["random_logit"])
    with pytest.raises(ValueError, match=r"need explain\(x, targets\) -> maps; pass explain="):
        M.evaluate(["random_logit"], model, x, maps, targets)


def test_arcc_matches_pytorch_grad_cam(case, monkeypatch):
    """ARCC of pytorch-grad-cam 1.5.7 with its own GradCAM as the base method (the maps and
    the re-explanation are the same on both sides); ROAD's imputation without noise."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.metrics import road as road_module
    from pytorch_grad_cam.metrics.arcc import ARCC, Coherency
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x, _, targets = case
    monkeypatch.setattr(road_module.NoisyLinearImputer.__init__, "__defaults__", (0.0, road_module.neighbors_weights))
    with GradCAM(model, target_layers=[model[2]]) as cam:

        def explain(inputs, t):
            return torch.from_numpy(cam(input_tensor=inputs, targets=[ClassifierOutputTarget(int(c)) for c in t]))

        maps = explain(x, targets)
        cam_targets = [ClassifierOutputTarget(int(c)) for c in targets]
        expected = ARCC(cam)(x, maps.numpy(), cam_targets, model)
        coherency = Coherency()(x, maps.numpy(), cam_targets, model, cam)
        ours = M.arcc(model, x, maps, targets, explain=explain, noise=0.0)
    # an untrained net moves its logits little under ROAD: ARCC is small, compared relatively
    assert (expected > 1e-3).sum() >= 2, expected
    np.testing.assert_allclose(ours["arcc"].numpy(), expected, rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(ours["arcc_coherency"].numpy(), coherency, atol=1e-5)
    assert 0.6 < float(ours["arcc_coherency"].min())
    assert (ours["arcc_complexity"] == maps.abs().flatten(1).mean(1)).all()


@pytest.mark.parametrize(
    "name,cls", [("relevance_mass", "RelevanceMassAccuracy"), ("relevance_rank", "RelevanceRankAccuracy")]
)
def test_localisation_metrics_match_quantus_without_ties(case, name, cls):
    """Non-negative maps with distinct values (ours take relu(map); with ties, relevance_rank
    shares the places fairly where Quantus follows numpy's sort order)."""
    model, x, maps, targets = case
    masks = torch.zeros(3, 20, 20)
    masks[0, 2:9, 3:15], masks[1, 10:, :], masks[2, 5:15, 5:15] = 1, 1, 1
    ref = getattr(quantus, cls)(**PER_IMAGE)
    expected = quantus_scores(ref, model, x, maps, targets, s_batch=masks[:, None].numpy())
    np.testing.assert_allclose(getattr(M, name)(maps, masks).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(
    "name,cls,draw",
    [
        ("max_sensitivity", "MaxSensitivity", "uniform"),
        ("local_lipschitz_estimate", "LocalLipschitzEstimate", "normal"),
    ],
)
def test_robustness_metrics_match_quantus_at_the_same_noise(case, monkeypatch, name, cls, draw):
    from diffcam_lightning import CAMEngine

    model, x, _, targets = case
    engine = CAMEngine(model, "2")

    def explain(inputs, t):
        return engine(inputs.float(), targets=t, methods="gradcam", size="input")["gradcam"]

    def quantus_explain(model, inputs, targets, **kwargs):
        return explain(torch.from_numpy(inputs), torch.from_numpy(np.asarray(targets)))[:, None].numpy()

    samples = 4
    rng = np.random.default_rng(2)
    noise = (
        rng.uniform(-0.2, 0.2, (samples, *x.shape)) if draw == "uniform" else rng.normal(0, 0.1, (samples, *x.shape))
    )
    noise = noise.astype(np.float32)
    replay(monkeypatch, draw, [noise[s].reshape(len(x), -1) for s in range(samples)])
    maps = explain(x, targets)
    ref = getattr(quantus, cls)(nr_samples=samples, **PER_IMAGE)
    expected = quantus_scores(ref, model, x, maps, targets, explain_func=quantus_explain)
    monkeypatch.undo()
    ours = getattr(M, name)(model, x, maps, targets, explain=explain, draws=torch.from_numpy(noise), batch_size=5)
    np.testing.assert_allclose(ours[name].numpy(), expected, rtol=1e-4)
    assert (ours[name] > 0).all()


def test_every_metric_leaves_modes_statistics_and_grads_as_they_were_and_ignores_batch_size():
    """A train-mode model with a frozen (eval) BatchNorm, dropout and existing .grad: every
    registered metric runs it in eval mode, restores each submodule's flag, moves no running
    statistic, leaves .grad and the global RNG alone, and gives the same scores at batch
    sizes 1 and 64."""
    from diffcam_lightning import CAMEngine

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).train()
    model[5].eval()
    model(torch.rand(4, 3, 16, 16)).sum().backward()  # .grad present, BatchNorm statistics moved once
    modes = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    x, targets = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 2, 4])
    maps = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    masks = (torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    engine = CAMEngine(model, "4")
    names = list(M.METRICS)
    small = {
        "features_in_step": 3 * 32,
        "samples": 2,
        "runs": 4,
        "subset_size": 20,
        "regions": 4,
        "steps": 4,
        "percentiles": (50,),
        "noise": 0.0,
    }
    options = {k: v for k, v in small.items() if k in M.accepted_options(names)}
    explain = M.explainer(engine, "gradcam")
    options["noise"] = 0.01  # ROAD's imputation noise: from its own generator, not the global RNG
    rng = torch.get_rng_state()
    one = M.evaluate(names, model, x, maps, targets, masks=masks, explain=explain, batch_size=1, **options)
    assert torch.equal(torch.get_rng_state(), rng)
    many = M.evaluate(names, model, x, maps, targets, masks=masks, explain=explain, batch_size=64, **options)
    for name in names:
        torch.testing.assert_close(one[name], many[name], msg=name, equal_nan=True)
    assert {n: m.training for n, m in model.named_modules()} == modes
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], msg=k)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


def test_histogram_entropy_matches_numpy_and_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    maps = torch.rand(3, 9, 9, generator=torch.Generator().manual_seed(4)) ** 3
    maps[2] = 0.5  # constant: numpy widens the range, one bin
    for i in range(3):
        counts, _ = np.histogram(maps[i].double().numpy(), bins=100)
        assert abs(float(M.histogram_entropy(maps)[i]) - scipy_stats.entropy(counts)) < 1e-10


def test_efficient_mprt_matches_quantus(case):
    from diffcam_lightning import CAMEngine

    model, x, _, targets = case
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    explain = M.explainer(CAMEngine(model, "2"), "gradcam", size="input")

    def quantus_explain(model, inputs, targets, **kwargs):  # Quantus hands the (randomised) model itself
        return CAMEngine(model, "2")(
            torch.from_numpy(inputs), targets=torch.from_numpy(np.asarray(targets)), methods="gradcam", size="input"
        )["gradcam"][:, None].numpy()

    maps = explain(x, targets)
    ref = quantus.EfficientMPRT(disable_warnings=True)
    expected = quantus_scores(ref, model, x, maps, targets, explain_func=quantus_explain)
    torch.set_rng_state(rng)
    ours = M.efficient_mprt(model, x, maps, targets, explain=explain)["efficient_mprt"]
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-6)
    assert torch.equal(torch.get_rng_state(), rng)  # the re-initialisation's seeding is undone
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.filterwarnings(
    "ignore:invalid value encountered in divide:RuntimeWarning"
)  # SciPy, on a blank layer's maps
def test_smooth_mprt_matches_quantus_at_the_same_noise(case, monkeypatch):
    """Quantus 0.6's sMPRT explains through quantus.explain, not the explain_func it is given
    (replaced here by the same GradCAM); its last correlation is the fully randomised model's."""
    from diffcam_lightning import CAMEngine

    model, x, _, targets = case
    explain = M.explainer(CAMEngine(model, "2"), "gradcam", size="input")
    maps = explain(x, targets)

    def quantus_explain(model, inputs, targets, **kwargs):
        return CAMEngine(model, "2")(
            torch.as_tensor(inputs, dtype=torch.float32),
            targets=torch.from_numpy(np.asarray(targets)),
            methods="gradcam",
            size="input",
        )["gradcam"][:, None].numpy()

    samples = 4
    draws = np.random.default_rng(5).standard_normal((samples - 1, *x.shape))
    calls = []

    def randn(*shape):
        calls.append(shape)
        return draws[(len(calls) - 1) % (samples - 1)]  # every layer sees the same draws

    monkeypatch.setattr(quantus, "explain", quantus_explain)
    monkeypatch.setattr(np.random, "randn", randn)
    ref = quantus.SmoothMPRT(nr_samples=samples, return_last_correlation=True, **PER_IMAGE)
    expected = quantus_scores(ref, model, x, maps, targets, explain_func=quantus_explain)
    monkeypatch.undo()
    assert len(calls) == (samples - 1) * (1 + 3)  # the original model, then 3 layers
    ours = M.smooth_mprt(
        model, x, maps, targets, explain=explain, samples=samples, draws=torch.from_numpy(draws).float()
    )
    assert np.isfinite(expected).all(), expected
    np.testing.assert_allclose(ours["smooth_mprt"].numpy(), expected, atol=1e-5)

"""Cost of the CAM metrics: what ``CAMAudit(metrics=...)`` adds to an audit, and our metrics
against the anchors' implementations on the same maps (one process, interleaved rounds).

    python benchmarks/bench_metrics.py audit     # the audit's CAMs vs each metric group on top
    python benchmarks/bench_metrics.py anchors   # ours vs torchcam (deletion/insertion) and
                                                 # pytorch-grad-cam (ROAD combined)
    python benchmarks/bench_metrics.py quantus   # ours vs Quantus 0.6, metric by metric

``audit``: the synthetic config's model (timm ``test_resnet``, 7 classes, 64 px, random
weights: the cost does not depend on them), 64 audit images in batches of 32; the audit's
own CAM computation (nine default methods, one engine call per batch) against each metric
group for ONE method (the audit pays it once per method it is asked for).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import timm
import torch

from diffcam_lightning import CAMEngine
from diffcam_lightning.audit.callback import DEFAULT_METHODS
from diffcam_lightning.cams import metrics as M
from diffcam_lightning.data.synthetic import SyntheticShapes, SyntheticSpec


def timed_interleaved(fns: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds of each function; each round runs every function once."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


GROUPS = {
    "deletion + insertion (20 steps)": ["deletion", "insertion"],
    "average drop + increase in confidence": ["average_drop", "increase_in_confidence"],
    "ROAD MoRF + LeRF (9 percentiles)": ["road_combined"],
    "relevance mass + rank": ["relevance_mass", "relevance_rank"],
}


def audit(args) -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=7, output_stride=8).eval()
    data = SyntheticShapes(64, "val", SyntheticSpec(image_size=64))
    x = torch.stack([data[i]["image"] for i in range(64)])
    labels = torch.stack([data[i]["label"] for i in range(64)])
    masks = torch.stack([data[i]["saliency"] for i in range(64)])
    engine = CAMEngine(model)
    batches = [(x[i : i + 32], labels[i : i + 32], masks[i : i + 32]) for i in range(0, 64, 32)]
    maps = [engine(b, targets=y, methods=DEFAULT_METHODS)["gradcam"] for b, y, _ in batches]

    def cams():
        for b, y, _ in batches:
            engine(b, targets=y, methods=DEFAULT_METHODS)

    def group(names, images):
        def run():
            done = 0
            for (b, y, m), cam in zip(batches, maps):
                n = min(len(b), images - done)
                if n > 0:
                    M.evaluate(names, model, b[:n], cam[:n], y[:n], masks=m[:n], batch_size=64, progress=False)
                done += n

        return run

    fns = {"cams": cams, **{k: group(v, args.road_images if "ROAD" in k else 64) for k, v in GROUPS.items()}}
    times = timed_interleaved(fns, args.warmup, args.repeats)
    print(f"CPU, {torch.get_num_threads()} threads; medians of {args.repeats} rounds\n")
    print("| cost of | images | seconds | x the audit's CAMs (64 images, 9 methods) |")
    print("|---|---:|---:|---:|")
    print(f"| the audit's CAMs: 9 methods, one engine call per batch of 32 | 64 | {times['cams']:.2f} | 1.0x |")
    for name in GROUPS:
        n = args.road_images if "ROAD" in name else 64
        print(f"| {name}, ONE method | {n} | {times[name]:.2f} | {times[name] / times['cams']:.1f}x |")


class FixedMaps:
    """A torchcam extractor returning given maps, so both sides score the same maps."""

    def __init__(self, model, maps) -> None:
        self.model, self.maps = model, maps

    def __call__(self, class_idx=None, scores=None, **kwargs):
        return [self.maps]

    def fuse_cams(self, cams):
        return cams[0]

    @contextlib.contextmanager
    def _hooks_off(self):
        yield


def anchors(args) -> None:
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.metrics import DeletionInsertionMetric

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    targets = model(x).argmax(1)
    maps = CAMEngine(model)(x, targets=targets, methods="gradcam", size="input")["gradcam"]
    cam_targets = [ClassifierOutputTarget(int(t)) for t in targets]

    def torchcam_run():
        metric = DeletionInsertionMetric(
            FixedMaps(model, maps), partial(torch.softmax, dim=-1), steps=20, batch_size=64
        )
        metric.update(x, class_idx=targets.tolist())

    times = timed_interleaved(
        {
            "ours_di": lambda: M.deletion_insertion(model, x, maps, targets, steps=20, batch_size=64),
            "torchcam_di": torchcam_run,
            "ours_road": lambda: M.road(model, x, maps, targets, batch_size=64),
            "ref_road": lambda: ROADCombined()(x, maps.numpy(), cam_targets, model),
        },
        args.warmup,
        args.repeats,
    )
    print(
        f"CPU, {torch.get_num_threads()} threads; resnet18, B={args.batch}, {args.size} px; medians of {args.repeats} rounds (s)\n"
    )
    print("| metric | ours | anchor | anchor / ours |")
    print("|---|---:|---:|---:|")
    print(
        f"| deletion + insertion, 20 steps (torchcam 0.5) | {times['ours_di']:.2f} | {times['torchcam_di']:.2f} | {times['torchcam_di'] / times['ours_di']:.1f}x |"
    )
    print(
        f"| ROAD combined, 9 percentiles (pytorch-grad-cam) | {times['ours_road']:.2f} | {times['ref_road']:.2f} | {times['ref_road'] / times['ours_road']:.1f}x |"
    )


def quantus_pairs(model, x, maps, targets, engine):
    """(ours, Quantus) for each Quantus metric at the same settings (per-image normalisation)."""
    import quantus
    from quantus.functions.perturb_func import baseline_replacement_by_mask

    if not hasattr(np, "trapz"):  # Quantus 0.6 integrates with np.trapz, removed in NumPy 2.4
        np.trapz = np.trapezoid
    explain = M.explainer(engine, "gradcam", size="input")
    common = {"normalise_func_kwargs": {"normalise_axes": (1, 2, 3)}, "disable_warnings": True}
    xs, ys, a = x.numpy(), targets.numpy(), maps[:, None].numpy()
    step = x.shape[-2] * x.shape[-1] // 16  # Quantus requires steps that divide H*W

    def ref(metric, **call):
        return lambda: metric(model=model, x_batch=xs, y_batch=ys, a_batch=a, device="cpu", batch_size=64, **call)

    n_classes = int(model(x[:1]).shape[1])

    def by_mask(arr, mask, **kwargs):  # Quantus 0.6's IROF passes a [B, 1, H, W] mask for [B, C, H, W] images
        return baseline_replacement_by_mask(arr, np.broadcast_to(mask, arr.shape), **kwargs)

    explain(x[:1], targets[:1])  # resolves the layer's name
    layer = explain.layer

    def quantus_explain_any(model, inputs, targets, **kwargs):  # eMPRT hands the randomised model itself;
        # + 1e-3 noise: a random net's GradCAM can be all zeros, which Quantus refuses
        maps = CAMEngine(model, layer)(
            torch.from_numpy(inputs).float(),
            targets=torch.from_numpy(np.asarray(targets)),
            methods="gradcam",
            size="input",
        )["gradcam"]
        return (maps + 1e-3 * torch.rand(maps.shape, generator=torch.Generator().manual_seed(1)))[:, None].numpy()

    return {
        "Pixel Flipping (48 steps)": (
            lambda: M.pixel_flipping(model, x, maps, targets, features_in_step=step, batch_size=64),
            ref(quantus.PixelFlipping(features_in_step=step, **common)),
        ),
        "Region Perturbation (8 px, 16 regions)": (
            lambda: M.region_perturbation(model, x, maps, targets, regions=16, batch_size=64),
            ref(quantus.RegionPerturbation(patch_size=8, regions_evaluation=16, **common)),
        ),
        "Faithfulness Correlation (100 runs)": (
            lambda: M.faithfulness_correlation(model, x, maps, targets, batch_size=64),
            ref(quantus.FaithfulnessCorrelation(return_aggregate=False, **common)),
        ),
        "Monotonicity Correlation (48 steps, 10 samples)": (
            lambda: M.monotonicity_correlation(
                model, x, maps, targets, features_in_step=step, samples=10, batch_size=64
            ),
            ref(quantus.MonotonicityCorrelation(features_in_step=step, nr_samples=10, **common)),
        ),
        "IROF (SLIC superpixels)": (
            lambda: M.irof(model, x, maps, targets, batch_size=64),
            ref(quantus.IROF(return_aggregate=False, perturb_func=by_mask, **common)),
        ),
        "Sparseness": (lambda: M.sparseness(maps), ref(quantus.Sparseness(**common))),
        "Complexity": (lambda: M.complexity(maps), ref(quantus.Complexity(**common))),
        "Random Logit": (
            lambda: M.random_logit(model, x, maps, targets, explain=explain),
            ref(quantus.RandomLogit(num_classes=n_classes, **common), explain_func=quantus_explain_any),
        ),
        "efficient MPRT": (
            lambda: M.efficient_mprt(model, x, maps, targets, explain=explain),
            ref(quantus.EfficientMPRT(disable_warnings=True), explain_func=quantus_explain_any),
        ),
        "Max-Sensitivity (20 samples)": (
            lambda: M.max_sensitivity(model, x, maps, targets, explain=explain, samples=20, batch_size=64),
            ref(quantus.MaxSensitivity(nr_samples=20, **common), explain_func=quantus_explain_any),
        ),
        "Local Lipschitz Estimate (20 samples)": (
            lambda: M.local_lipschitz_estimate(model, x, maps, targets, explain=explain, samples=20, batch_size=64),
            ref(quantus.LocalLipschitzEstimate(nr_samples=20, **common), explain_func=quantus_explain_any),
        ),
    }


def quantus_mode(args) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    targets = model(x).argmax(1)
    engine = CAMEngine(model)
    maps = engine(x, targets=targets, methods="gradcam", size="input")["gradcam"]
    # the cost does not depend on the values; a random net's GradCAM can be all zeros, which Quantus refuses
    maps = maps + 1e-3 * torch.rand(maps.shape, generator=torch.Generator().manual_seed(0))
    pairs = quantus_pairs(model, x, maps, targets, engine)
    fns = {
        f"{name}|{side}": fn
        for name, (ours, theirs) in pairs.items()
        for side, fn in (("ours", ours), ("quantus", theirs))
    }
    times = timed_interleaved(fns, args.warmup, args.repeats)
    print(
        f"CPU, {torch.get_num_threads()} threads; resnet18, B={args.batch}, {args.size} px; medians of {args.repeats} rounds (s)\n"
    )
    print("| metric | ours | Quantus 0.6 | Quantus / ours |")
    print("|---|---:|---:|---:|")
    for name in pairs:
        ours, theirs = times[f"{name}|ours"], times[f"{name}|quantus"]
        print(f"| {name} | {ours:.3f} | {theirs:.3f} | {theirs / ours:.1f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("audit", "anchors", "quantus"))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument(
        "--road-images", type=int, default=8, help="audit: images for the ROAD row (its CPU cost is high)"
    )
    args = parser.parse_args()
    np.random.seed(0)
    {"audit": audit, "anchors": anchors, "quantus": quantus_mode}[args.mode](args)


if __name__ == "__main__":
    main()

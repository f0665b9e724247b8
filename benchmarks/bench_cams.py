"""CAMEngine against pytorch-grad-cam: same model, batch, layer and targets, one process.

Rows per architecture (medians over ``--repeats`` after ``--warmup`` runs):
- ``forward``: a plain ``torch.no_grad()`` forward of the batch (the physical floor);
- ``ours: all gradient CAMs``: one ``CAMEngine`` call for the methods of
  ``GRADIENT_METHODS`` (7 weightings x 7 backprop targets: GradCAM, GradCAM++, HiResCAM,
  XGradCAM, LayerCAM, GradCAMElementWise, EigenGradCAM, each on y_c, on the three
  DiffGradCAM differences, ReST, FinerWeighted and p_c; one forward, one batched VJP);
- ``pytorch-grad-cam: all, one at a time``: its class for each weighting, with a
  difference target for the Diff variants (28 forwards and backwards);
- ``GradCAM alone`` for both;
- ``--layercam``: LayerCAM alone, ours vs torchcam 0.5 vs pytorch-grad-cam (all upsampled to
  the input, as pytorch-grad-cam always does; torchcam's maps are upsampled with
  ``F.interpolate`` after its call).

Each round runs every variant once (interleaved), so load changes hit all alike.

``--new`` times the methods added in issue 22 (FinerCAM, KPCA-CAM, FEM, RandomCAM,
ShapleyCAM, FullGrad, CAM, SSCAM, ISCAM, SmoothGradCAM++, a ReST target), each against its
anchor's class at the same batch (``--samples`` noise samples for SSCAM/ISCAM on both sides).

``--scorecam`` times ScoreCAM instead: ours against pytorch-grad-cam's ``ScoreCAM`` at the
same batch size of masked inputs, with the share of constant channels and the max map
difference (the maps must agree to 1e-5).

    python benchmarks/bench_cams.py                       # CPU, B=4, 224 px (Inception 299)
    python benchmarks/bench_cams.py --archs deit_small_patch16_224 swin_tiny_patch4_window7_224

Token and channels-last models (DeiT-S, Swin-T) run pytorch-grad-cam with the
``reshape_transform`` its documentation gives, at the same layer our engine picks.
    python benchmarks/bench_cams.py --device cuda --repeats 20
    python benchmarks/bench_cams.py --layercam              # the LayerCAM table
    python benchmarks/bench_cams.py --scorecam --archs resnet18 --batch 2 --size 128
    python benchmarks/bench_cams.py --new --archs resnet18 --batch 2 --size 64
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import timm
import torch

from diffcam_lightning import CAMEngine
from diffcam_lightning.cams import GRADIENT_METHODS
from diffcam_lightning.cams.reference import reference_cam

ARCHITECTURES = {
    "densenet121": 224,
    "resnet50": 224,
    "inception_v3": 299,
    "convnext_tiny": 224,
    "deit_small_patch16_224": 224,
    "swin_tiny_patch4_window7_224": 224,
    "resnet18": 224,
}


def reshape_transform(result) -> Callable | None:
    """pytorch-grad-cam's documented reshape_transform for the engine's layout (None for NCHW)."""
    if result.layout == "nhwc":
        return lambda t: t.transpose(2, 3).transpose(1, 2)
    if result.layout.startswith("tokens"):
        prefix = int(result.layout.split("(")[1].split()[0])
        h, w = result.grid
        return lambda t: t[:, prefix:, :].reshape(t.size(0), h, w, t.size(2)).transpose(2, 3).transpose(1, 2)
    return None


def timed_interleaved(fns: dict[str, Callable[[], object]], warmup: int, repeats: int, device) -> dict[str, float]:
    """Median wall time (ms) of each function; one round runs every function once, so
    a load change on a shared machine hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def reference_run(model, layer, x, targets, methods, transform=None) -> None:
    for method in methods:
        reference_cam(model, layer, x, targets, method, transform)


def torchcam_layercam(model, layer_name: str, x, targets) -> Callable[[], object]:
    from torchcam.methods import LayerCAM

    def run():
        with LayerCAM(model, target_layer=layer_name) as extractor:
            cams = extractor(class_idx=targets, scores=model(x))
        return torch.nn.functional.interpolate(cams[0].unsqueeze(1), size=x.shape[-2:], mode="bilinear")

    return run


def bench_layercam(name: str, size: int, args, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=1000).to(device).eval()
    x = torch.randn(args.batch, 3, size, size, device=device)
    engine = CAMEngine(model)
    layer = dict(model.named_modules())[engine.target_layer]
    targets = model(x).argmax(1).tolist()
    return timed_interleaved(
        {
            "ours": lambda: engine(x, targets=targets, methods="layercam", size="input"),
            "torchcam": torchcam_layercam(model, engine.target_layer, x, targets),
            "ref": lambda: reference_run(model, layer, x, targets, ["layercam"]),
        },
        args.warmup,
        args.repeats,
        device,
    )


def svd_first_component(features: torch.Tensor) -> torch.Tensor:
    """The first principal component as computed before issue 20 (a full batched float64 SVD
    of ``[B, h*w, K]``), kept here so ``--eigen-baseline`` can time it beside the current one."""
    acts = torch.nan_to_num(features.to(torch.float64), nan=0.0)
    b, k, h, w = acts.shape
    flat = acts.reshape(b, k, h * w).transpose(1, 2)
    flat = flat - flat.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(flat, full_matrices=False)
    return (flat @ vh[:, 0, :].unsqueeze(-1)).reshape(b, h, w).float()


def with_first_component(
    fn: Callable[[torch.Tensor], torch.Tensor], call: Callable[[], object]
) -> Callable[[], object]:
    """``call`` with ``methods.eigen.first_component`` (what EigenCAM and EigenGradCAM call)
    replaced by ``fn`` for its duration."""
    from diffcam_lightning.cams.methods import eigen as methods

    def run():
        current = methods.first_component
        methods.first_component = fn
        try:
            return call()
        finally:
            methods.first_component = current

    return run


def bench_architecture(name: str, size: int, args, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=1000).to(device).eval()
    x = torch.randn(args.batch, 3, size, size, device=device)
    engine = CAMEngine(model)
    transform = reshape_transform(engine.compute(x[:1]))
    layer = dict(model.named_modules())[engine.target_layer]
    with torch.no_grad():
        targets = model(x).argmax(1).tolist()

    def forward():
        with torch.no_grad():
            model(x)

    def ours_all():
        return engine(x, targets=targets, methods=GRADIENT_METHODS, size="input")

    fns = {
        "forward": forward,
        "ours_all": ours_all,
        "ours_gradcam": lambda: engine(x, targets=targets, methods="gradcam", size="input"),
    }
    if args.eigen_baseline:
        fns["ours_all_svd"] = with_first_component(svd_first_component, ours_all)
    if not args.no_reference:
        fns["ref_all"] = lambda: reference_run(model, layer, x, targets, GRADIENT_METHODS, transform)
        fns["ref_gradcam"] = lambda: reference_run(model, layer, x, targets, ["gradcam"], transform)
    times = timed_interleaved(fns, args.warmup, args.repeats, device)
    return {**times, "layer": engine.target_layer}


def bench_scorecam(name: str, size: int, args, device: torch.device) -> dict[str, float]:
    """ScoreCAM, ours vs pytorch-grad-cam, same model, input, targets and batch size."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=1000).to(device).eval()
    x = torch.randn(args.batch, 3, size, size, device=device)
    engine = CAMEngine(model, scorecam_batch_size=args.scorecam_batch)
    layer = dict(model.named_modules())[engine.target_layer]
    with torch.no_grad():
        targets = model(x).argmax(1).tolist()
    acts = {}
    handle = layer.register_forward_hook(lambda m, i, o: acts.setdefault("A", o))
    with torch.no_grad():
        model(x)
    handle.remove()
    constant = (acts["A"].amax(dim=(2, 3)) == acts["A"].amin(dim=(2, 3))).float().mean().item()

    def ours():
        return engine(x, targets=targets, methods="scorecam", size="input")["scorecam"].cpu()

    def theirs():
        return torch.from_numpy(
            reference_cam(model, layer, x, targets, "scorecam", scorecam_batch_size=args.scorecam_batch)
        )

    diff = (ours() - theirs()).abs().max().item()
    times = timed_interleaved({"ours": ours, "ref": theirs}, args.warmup, args.repeats, device)
    return {**times, "constant": constant, "diff": diff}


# The methods added with the anchors' 2025-26 releases: ours vs the anchor's class at the
# same batch, model, layer and targets (pytorch-grad-cam unless marked torchcam).
NEW_METHODS = (
    "restgradcam",
    "finercam",
    "kpcacam",
    "fem",
    "randomcam",
    "shapleycam",
    "fullgrad",
    "cam",
    "sscam",
    "iscam",
    "smoothgradcam++",
    "guided_backprop",
    "refinecam",
)
FUNCTIONS = ("guided_backprop", "refinecam")  # functions beside the registry
TORCHCAM = {"cam": "CAM", "sscam": "SSCAM", "iscam": "ISCAM", "smoothgradcam++": "SmoothGradCAMpp"}


def torchcam_run(method: str, model, layer_name: str, x, targets, samples: int) -> Callable[[], object]:
    import torchcam.methods as tc

    kwargs = {"num_samples": samples, "batch_size": 32} if method in ("sscam", "iscam") else {}
    if method == "cam":
        kwargs["fc_layer"] = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]

    def run():
        with getattr(tc, TORCHCAM[method])(model, layer_name, input_shape=tuple(x.shape[1:]), **kwargs) as extractor:
            (cams,) = extractor(class_idx=targets, scores=model(x))
        return torch.nn.functional.interpolate(cams.unsqueeze(1), size=x.shape[-2:], mode="bilinear")

    return run


def bench_new(name: str, size: int, args, device: torch.device) -> dict[str, tuple[float, float]]:
    """{method: (ours ms, anchor ms)} for each new method, interleaved rounds."""
    import functools

    from diffcam_lightning.cams.methods import METHOD_REGISTRY, iscam, register_method, sscam

    for method, fn in (("sscam", sscam), ("iscam", iscam)):  # the anchor's sample count on both sides
        key = f"{method}@{args.samples}"
        if key not in METHOD_REGISTRY:
            register_method(key)(functools.partial(fn, num_samples=args.samples))
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=1000).to(device).eval()
    x = torch.randn(args.batch, 3, size, size, device=device)
    engine = CAMEngine(model, scorecam_batch_size=32)
    layer = dict(model.named_modules())[engine.target_layer]
    with torch.no_grad():
        targets = model(x).argmax(1).tolist()

    refine_layers = (
        [n for n, _ in model.named_children()][-5:-2] if name.startswith("resnet") else [engine.target_layer]
    )

    def function_pair(method: str) -> tuple[Callable[[], object], Callable[[], object]]:
        """(ours, pytorch-grad-cam's) for the functions: guided backprop (one image at a
        time on its side, as it supports), RefineCAM over three stages."""
        import copy

        from pytorch_grad_cam import GuidedBackpropReLUModel
        from pytorch_grad_cam.refine_cam import RefineCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        from diffcam_lightning.cams import guided_backprop, refinecam

        if method == "guided_backprop":
            theirs_model = copy.deepcopy(model)  # it swaps the ReLUs (and drops inplace=True)
            guided = GuidedBackpropReLUModel(theirs_model, device=str(device))
            return (
                lambda: guided_backprop(model, x, targets),
                lambda: [guided(x[i : i + 1], c) for i, c in enumerate(targets)],
            )
        modules = [dict(model.named_modules())[n] for n in refine_layers]
        cam_targets = [ClassifierOutputTarget(c) for c in targets]

        def theirs():  # its hooks are released after each call, as ours are
            reference = RefineCAM(model, modules)
            try:
                return reference(x, targets=cam_targets)
            finally:
                for base in reference.base_cam_per_layer:
                    base.activations_and_grads.release()

        return lambda: refinecam(model, x, refine_layers, targets), theirs

    def ours(method: str) -> Callable[[], object]:
        key = f"{method}@{args.samples}" if method in ("sscam", "iscam") else method
        return lambda: engine(x, targets=targets, methods=key, size="input")

    def anchor(method: str) -> Callable[[], object]:
        if method in TORCHCAM:
            return torchcam_run(method, model, engine.target_layer, x, targets, args.samples)
        return lambda: reference_cam(model, layer, x, targets, method)

    fns = {}
    for method in args.methods:
        pair = function_pair(method) if method in FUNCTIONS else (ours(method), anchor(method))
        fns[f"ours:{method}"], fns[f"anchor:{method}"] = pair
    times = timed_interleaved(fns, args.warmup, args.repeats, device)
    return {m: (times[f"ours:{m}"], times[f"anchor:{m}"]) for m in args.methods}


def main_new(args, device: torch.device) -> None:
    print(f"SSCAM / ISCAM with {args.samples} samples on both sides\n")
    print("| architecture | method | anchor | ours (ms) | anchor (ms) | anchor / ours |")
    print("|---|---|---|---:|---:|---:|")
    for name in args.archs:
        size = args.size or ARCHITECTURES[name]
        for method, (ours, theirs) in bench_new(name, size, args, device).items():
            source = "torchcam 0.5" if method in TORCHCAM else "pytorch-grad-cam 1.5.7"
            print(
                f"| {name} ({size} px) | {method} | {source} | {ours:.1f} | {theirs:.1f} | {theirs / ours:.1f}x |",
                flush=True,
            )


def main_scorecam(args, device: torch.device) -> None:
    print(
        "| architecture | constant channels | ours: ScoreCAM (ms) | pytorch-grad-cam: ScoreCAM (ms) | speed-up "
        "| max map diff |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.archs:
        size = args.size or ARCHITECTURES[name]
        r = bench_scorecam(name, size, args, device)
        print(
            f"| {name} ({size} px) | {100 * r['constant']:.1f} % | {r['ours']:.0f} | {r['ref']:.0f} "
            f"| {r['ref'] / r['ours']:.2f}x | {r['diff']:.1e} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=list(ARCHITECTURES)[:4], choices=list(ARCHITECTURES))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layercam", action="store_true", help="LayerCAM: ours vs torchcam vs pytorch-grad-cam")
    parser.add_argument("--scorecam", action="store_true", help="time ScoreCAM (ours vs pytorch-grad-cam) instead")
    parser.add_argument("--scorecam-batch", type=int, default=32, help="masked inputs per forward, both libraries")
    parser.add_argument("--size", type=int, default=None, help="input size (default: per architecture)")
    parser.add_argument("--no-reference", action="store_true", help="leave pytorch-grad-cam out (our rows only)")
    parser.add_argument(
        "--eigen-baseline",
        action="store_true",
        help="also time the 28 with the full-SVD first principal component used before issue 20",
    )
    parser.add_argument("--new", action="store_true", help="the methods added in issue 22, ours vs their anchor")
    parser.add_argument("--methods", nargs="+", default=list(NEW_METHODS), choices=list(NEW_METHODS))
    parser.add_argument("--samples", type=int, default=2, help="SSCAM / ISCAM noise samples (both sides)")
    args = parser.parse_args()
    device = torch.device(args.device)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {label}; torch {torch.__version__}; B={args.batch}; medians of {args.repeats} runs (ms)\n")
    if args.scorecam:
        main_scorecam(args, device)
        return
    if args.new:
        main_new(args, device)
        return
    if args.layercam:
        print(
            "| architecture | ours: LayerCAM | torchcam: LayerCAM | pytorch-grad-cam: LayerCAM | torchcam / ours | pytorch-grad-cam / ours |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for name in args.archs:
            r = bench_layercam(name, ARCHITECTURES[name], args, device)
            print(
                f"| {name} ({ARCHITECTURES[name]} px) | {r['ours']:.1f} | {r['torchcam']:.1f} | {r['ref']:.1f} "
                f"| {r['torchcam'] / r['ours']:.1f}x | {r['ref'] / r['ours']:.1f}x |",
                flush=True,
            )
        return
    n = len(GRADIENT_METHODS)
    if args.no_reference or args.eigen_baseline:
        main_eigen(args, device, n)
        return
    print(
        f"| architecture | no-grad forward | ours: {n} gradient CAMs | pytorch-grad-cam: {n}, one at a time "
        "| speed-up | ours / forward | ours: GradCAM | pytorch-grad-cam: GradCAM | speed-up |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.archs:
        size = args.size or ARCHITECTURES[name]
        r = bench_architecture(name, size, args, device)
        print(
            f"| {name} ({size} px, {r['layer']}) | {r['forward']:.1f} | {r['ours_all']:.1f} | {r['ref_all']:.1f} "
            f"| {r['ref_all'] / r['ours_all']:.1f}x | {r['ours_all'] / r['forward']:.2f}x "
            f"| {r['ours_gradcam']:.1f} | {r['ref_gradcam']:.1f} | {r['ref_gradcam'] / r['ours_gradcam']:.1f}x |",
            flush=True,
        )


def main_eigen(args, device: torch.device, n: int) -> None:
    """Our rows only (``--no-reference``), with the full-SVD baseline if asked: the table for
    the last factor of the 28 maps against a no-grad forward."""
    svd = args.eigen_baseline
    print(
        f"| architecture | no-grad forward | ours: {n} gradient CAMs | ours / forward | ours: GradCAM | GradCAM / forward"
        + (f" | {n}, full-SVD first component (before) | before / forward |" if svd else " |")
    )
    print("|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if svd else ""))
    for name in args.archs:
        r = bench_architecture(name, args.size or ARCHITECTURES[name], args, device)
        row = (
            f"| {name} ({args.size or ARCHITECTURES[name]} px, {r['layer']}) | {r['forward']:.1f} | {r['ours_all']:.1f} "
            f"| {r['ours_all'] / r['forward']:.2f}x | {r['ours_gradcam']:.1f} | {r['ours_gradcam'] / r['forward']:.2f}x |"
        )
        if svd:
            row += f" {r['ours_all_svd']:.1f} | {r['ours_all_svd'] / r['forward']:.2f}x |"
        print(row, flush=True)


if __name__ == "__main__":
    main()

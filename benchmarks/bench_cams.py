"""CAMEngine against pytorch-grad-cam: same model, batch, layer and targets, one process.

Rows per architecture (medians over ``--repeats`` after ``--warmup`` runs):
- ``forward``: a plain ``torch.no_grad()`` forward of the batch (the physical floor);
- ``ours: 10 gradient CAMs``: one ``CAMEngine`` call for GradCAM, GradCAM++, HiResCAM,
  XGradCAM and the six DiffGradCAM variants (one forward, one batched VJP);
- ``pytorch-grad-cam: 10, one at a time``: its GradCAM / GradCAM++ / HiResCAM / XGradCAM
  classes, and GradCAM / GradCAM++ with a difference target for the DiffGradCAMs;
- ``GradCAM alone`` for both.

Each round runs every variant once (interleaved), so load changes hit all alike.

``--scorecam`` times ScoreCAM instead: ours against pytorch-grad-cam's ``ScoreCAM`` at the
same batch size of masked inputs, with the share of constant channels and the max map
difference (the maps must agree to 1e-5).

    python benchmarks/bench_cams.py                       # CPU, B=4, 224 px (Inception 299)
    python benchmarks/bench_cams.py --device cuda --repeats 20
    python benchmarks/bench_cams.py --scorecam --archs resnet18 --batch 2 --size 128
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import timm
import torch
from diffcam_lightning import CAMEngine
from diffcam_lightning.cams import GRADIENT_METHODS
from diffcam_lightning.cams.reference import reference_cam

ARCHITECTURES = {"densenet121": 224, "resnet50": 224, "inception_v3": 299, "convnext_tiny": 224, "resnet18": 224}

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


def reference_run(model, layer, x, targets, methods) -> None:
    for method in methods:
        reference_cam(model, layer, x, targets, method)


def bench_architecture(name: str, size: int, args, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=1000).to(device).eval()
    x = torch.randn(args.batch, 3, size, size, device=device)
    engine = CAMEngine(model)
    layer = dict(model.named_modules())[engine.target_layer]
    targets = model(x).argmax(1).tolist()

    def forward():
        with torch.no_grad():
            model(x)

    return timed_interleaved(
        {
            "forward": forward,
            "ours_all": lambda: engine(x, targets=targets, methods=GRADIENT_METHODS, size="input"),
            "ours_gradcam": lambda: engine(x, targets=targets, methods="gradcam", size="input"),
            "ref_all": lambda: reference_run(model, layer, x, targets, GRADIENT_METHODS),
            "ref_gradcam": lambda: reference_run(model, layer, x, targets, ["gradcam"]),
        },
        args.warmup,
        args.repeats,
        device,
    )


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
        return torch.from_numpy(reference_cam(model, layer, x, targets, "scorecam", args.scorecam_batch))

    diff = (ours() - theirs()).abs().max().item()
    times = timed_interleaved({"ours": ours, "ref": theirs}, args.warmup, args.repeats, device)
    return {**times, "constant": constant, "diff": diff}


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
    parser.add_argument("--scorecam", action="store_true", help="time ScoreCAM (ours vs pytorch-grad-cam) instead")
    parser.add_argument("--scorecam-batch", type=int, default=32, help="masked inputs per forward, both libraries")
    parser.add_argument("--size", type=int, default=None, help="input size (default: per architecture)")
    args = parser.parse_args()
    device = torch.device(args.device)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {label}; torch {torch.__version__}; B={args.batch}; medians of {args.repeats} runs (ms)\n")
    if args.scorecam:
        main_scorecam(args, device)
        return
    print(
        "| architecture | no-grad forward | ours: 10 gradient CAMs | pytorch-grad-cam: 10, one at a time "
        "| speed-up | ours / forward | ours: GradCAM | pytorch-grad-cam: GradCAM | speed-up |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.archs:
        r = bench_architecture(name, ARCHITECTURES[name], args, device)
        print(
            f"| {name} ({ARCHITECTURES[name]} px) | {r['forward']:.1f} | {r['ours_all']:.1f} | {r['ref_all']:.1f} "
            f"| {r['ref_all'] / r['ours_all']:.1f}x | {r['ours_all'] / r['forward']:.2f}x "
            f"| {r['ours_gradcam']:.1f} | {r['ref_gradcam']:.1f} | {r['ref_gradcam'] / r['ours_gradcam']:.1f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()

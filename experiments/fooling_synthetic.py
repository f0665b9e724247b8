"""RQ1 on the embedded synthetic data: does SHAM training fool GradCAM (and DiffGradCAM)?

For each regime (human-saliency targets, SHAM targets) and seed, train with the shipped
config (``configs/synthetic_{human,sham}.yaml``, built through the ``diffcam`` CLI's own
parser) and evaluate on the test split:

- accuracy;
- MSE of GradCAM to the SHAM (CAM grid, both min-max normalised);
- MSE and pointing-game hit rate of GradCAM, MeanDiffGradCAM (and a few others) against
  the true object masks. Pointing game: the maximum of the CAM, upsampled to the image,
  falls on the object.

    python experiments/fooling_synthetic.py --seeds 0 1 2 --out experiments/results

writes ``results.json``, ``table.md`` and ``fooling_synthetic.png`` (image, target,
GradCAM, MeanDiffGradCAM, EigenCAM for both regimes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from diffcam_lightning.cli import config_cli
from diffcam_lightning.data import SyntheticDataModule, denormalize
from diffcam_lightning.models import SaliencyClassifier
from diffcam_lightning.saliency import cam_mse, resize_target
from diffcam_lightning.shipped import CONFIGS_DIR  # the shipped configs (package data)

ROOT = Path(__file__).resolve().parents[1]
REGIMES = ("human", "sham")
METHODS = (
    "gradcam",
    "meandiffgradcam",
    "maxdiffgradcam",
    "lsediffgradcam",
    "gradcam++",
    "meandiffgradcam++",
    "eigencam",
)
FIGURE_METHODS = ("gradcam", "meandiffgradcam", "eigencam")


def train(regime: str, seed: int, epochs: int | None) -> tuple[SaliencyClassifier, SyntheticDataModule, float]:
    """Fit with the shipped config, exactly as ``diffcam fit --config ...`` would."""
    extra = [f"--trainer.max_epochs={epochs}"] if epochs is not None else []
    cli = config_cli(str(CONFIGS_DIR / f"synthetic_{regime}.yaml"), f"--seed_everything={seed}", *extra)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli.model, cli.datamodule, time.perf_counter() - start


def pointing_hits(cams: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """1 where the CAM's maximum (upsampled to the mask's size) lies on the object."""
    up = F.interpolate(cams.unsqueeze(1), size=masks.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
    idx = up.flatten(1).argmax(dim=1)
    return masks.flatten(1).gather(1, idx[:, None]).squeeze(1) > 0.5


@torch.no_grad()
def evaluate(model: SaliencyClassifier, dm: SyntheticDataModule) -> dict[str, float]:
    model.eval()
    dm.setup("test")
    sums: dict[str, list[float]] = {}
    for batch in dm.test_dataloader():
        x, y, masks = batch["image"], batch["label"], batch["saliency"]
        res = model.engine.compute(x, targets=y, methods=METHODS)
        grid = tuple(res.maps["gradcam"].shape[-2:])
        sham = model.sham(grid)
        target = resize_target(masks, grid)
        sums.setdefault("accuracy", []).extend((res.logits.argmax(1) == y).float().tolist())
        sums.setdefault("gradcam_to_sham_mse", []).extend(cam_mse(res.maps["gradcam"], sham).tolist())
        sums.setdefault("drift_gradcam_meandiff", []).extend(
            cam_mse(res.maps["gradcam"], res.maps["meandiffgradcam"]).tolist()
        )
        for m in METHODS:
            sums.setdefault(f"{m}_mask_mse", []).extend(cam_mse(res.maps[m], target).tolist())
            sums.setdefault(f"{m}_pointing", []).extend(pointing_hits(res.maps[m], masks).float().tolist())
    return {k: sum(v) / len(v) for k, v in sums.items()}


def figure(models: dict[str, SaliencyClassifier], dm: SyntheticDataModule, path: Path, n: int = 3) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = dm.datasets["test"]
    items = [ds[i] for i in range(n)]
    x = torch.stack([it["image"] for it in items])
    y = torch.stack([it["label"] for it in items])
    cols = ["image", "target", *FIGURE_METHODS]
    rows = [(r, i) for r in REGIMES for i in range(n)]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.0 * len(cols), 2.0 * len(rows)))
    for regime in REGIMES:
        model = models[regime].eval()
        maps = model.engine(x, targets=y, methods=FIGURE_METHODS, size="input")
        grid = tuple(model.engine(x[:1], targets=y[:1], methods=("gradcam",))["gradcam"].shape[-2:])
        for i in range(n):
            r = rows.index((regime, i))
            img = denormalize(x[i]).permute(1, 2, 0).numpy()
            if regime == "sham":
                tgt = F.interpolate(model.sham(grid)[None, None], size=x.shape[-2:], mode="nearest")[0, 0]
            else:
                tgt = items[i]["saliency"]
            panels = [None, tgt, *(maps[m][i] for m in FIGURE_METHODS)]
            for c, (name, panel) in enumerate(zip(cols, panels)):
                ax = axes[r, c]
                ax.imshow(img)
                if panel is not None:
                    ax.imshow(panel.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
                if r == 0:
                    ax.set_title({"target": "target saliency"}.get(name, name), fontsize=9)
                if c == 0:
                    ax.set_ylabel(f"{regime}-trained", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict[str, list[dict[str, float]]]) -> str:
    def cell(regime: str, key: str) -> str:
        vals = [r[key] for r in results[regime]]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.3f} ± {sd:.3f}"

    main = [
        ("accuracy", "accuracy"),
        ("GradCAM MSE to SHAM", "gradcam_to_sham_mse"),
        ("GradCAM MSE to object", "gradcam_mask_mse"),
        ("MeanDiffGradCAM MSE to object", "meandiffgradcam_mask_mse"),
        ("GradCAM pointing game", "gradcam_pointing"),
        ("MeanDiffGradCAM pointing game", "meandiffgradcam_pointing"),
        ("drift: MSE GradCAM vs MeanDiffGradCAM", "drift_gradcam_meandiff"),
    ]
    lines = ["| metric (test split, mean ± sd over seeds) | human targets | SHAM targets |", "|---|---|---|"]
    lines += [f"| {label} | {cell('human', key)} | {cell('sham', key)} |" for label, key in main]
    lines += ["", "| CAM vs object mask: MSE / pointing game | human targets | SHAM targets |", "|---|---|---|"]
    for m in METHODS:
        lines.append(
            f"| {m} | {cell('human', f'{m}_mask_mse')} / {cell('human', f'{m}_pointing')} "
            f"| {cell('sham', f'{m}_mask_mse')} / {cell('sham', f'{m}_pointing')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override the configs' max_epochs")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, float]]] = {r: [] for r in REGIMES}
    first: dict[str, SaliencyClassifier] = {}
    dm_first = None
    for seed in args.seeds:
        for regime in REGIMES:
            model, dm, seconds = train(regime, seed, args.epochs)
            metrics = evaluate(model, dm)
            metrics.update(seed=seed, train_seconds=seconds)
            results[regime].append(metrics)
            print(f"{regime} seed {seed}: {json.dumps({k: round(v, 4) for k, v in metrics.items()})}", flush=True)
            if regime not in first:
                first[regime], dm_first = model, dm
            (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "table.md").write_text(table(results))
    figure(first, dm_first, args.out / "fooling_synthetic.png")
    print(table(results))


if __name__ == "__main__":
    main()

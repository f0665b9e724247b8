"""Resident memory over many CAM calls and audited epochs: ours vs pytorch-grad-cam.

Same model, input and targets in one process; RSS (``/proc/self/statm``, Linux) after a
garbage collection, measured after a warm-up and then every 50 calls. pytorch-grad-cam is
run three ways users do: a ``with GradCAM(...)`` block per call, one object reused, and a
new object per call without ``with`` (the pattern behind its memory-growth reports: the
hooks of every object stay on the model). Then 20 epochs of a small fit with ``CAMAudit``.

    OMP_NUM_THREADS=1 python benchmarks/bench_memory.py
"""

from __future__ import annotations

import gc
import resource
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def rss_mb() -> float:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def series(call: Callable[[], object], calls: int, warmup: int, every: int = 50) -> list[float]:
    for _ in range(warmup):
        call()
    points = [rss_mb()]
    for i in range(1, calls + 1):
        call()
        if i % every == 0:
            points.append(rss_mb())
    return points


def main() -> None:
    import timm
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from diffcam_lightning import CAMEngine

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    x = torch.randn(4, 3, 64, 64)
    targets = [1, 2, 3, 4]
    cam_targets = [ClassifierOutputTarget(t) for t in targets]
    engine = CAMEngine(model, "layer4")
    reused: list = []  # created when its run starts: its hooks would also fire on the others' forwards

    def reused_object():
        if not reused:
            reused.append(GradCAM(model, target_layers=[model.layer4]))
        return reused[0](x, targets=cam_targets)

    def with_block():
        with GradCAM(model, target_layers=[model.layer4]) as cam:
            return cam(x, targets=cam_targets)

    def new_object():  # nothing kept by us: only the hooks each object leaves on the model
        return GradCAM(model, target_layers=[model.layer4])(x, targets=cam_targets)

    runs = {
        "ours: CAMEngine, GradCAM": lambda: engine(x, targets=targets, methods="gradcam", size="input"),
        "ours: CAMEngine, 11 methods": lambda: engine(
            x,
            targets=targets,
            methods=[m for m in __import__("diffcam_lightning").METHODS if m != "scorecam"],
            size="input",
        ),
        "pytorch-grad-cam: `with GradCAM(...)` per call": with_block,
        "pytorch-grad-cam: one GradCAM object reused": reused_object,
        "pytorch-grad-cam: new GradCAM per call, no `with`": new_object,
    }
    print(
        "resnet18 (random init, 10 classes), B=4, 64 px, CPU 1 thread; RSS in MB after 20 warm-up calls, "
        "then after every 50 calls (growth = last - first)\n"
    )
    print("| run | RSS after warm-up | after 50 / 100 / 150 / 200 calls | growth |")
    print("|---|---:|---|---:|")
    for name, fn in runs.items():  # in this order: the last run leaves hooks behind
        points = series(fn, 200, 20)
        if reused:
            reused.pop().activations_and_grads.release()  # removes its hooks
        print(
            f"| {name} | {points[0]:.1f} | {' / '.join(f'{p:.1f}' for p in points[1:])} | {points[-1] - points[0]:+.1f} |",
            flush=True,
        )
    hooks = len(model.layer4._forward_hooks)
    print(f"\nforward hooks left on layer4 afterwards: {hooks} (pytorch-grad-cam objects never closed)")
    audited_epochs()


def audited_epochs() -> None:
    import lightning as L
    from test_audit import UserNet, loaders

    from diffcam_lightning import CAMAudit

    class Meter(L.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.rss: list[float] = []

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.rss.append(rss_mb())

    import tempfile

    L.seed_everything(0)
    meter = Meter()
    train, val = loaders(saliency=True)
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            accelerator="cpu",
            max_epochs=20,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=root,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
            callbacks=[CAMAudit(audit_size=24, grid_images=4), meter],
        )
        trainer.fit(UserNet(), train, val)
    after = meter.rss[4:]
    print(
        f"\n20 audited epochs (CAMAudit, 24 images, 9 methods, PNG grids): RSS at epochs 5-20 "
        f"{min(after):.1f}-{max(after):.1f} MB, growth {after[-1] - after[0]:+.1f} MB, max spread {max(after) - min(after):.1f} MB"
    )
    print("per epoch:", " ".join(f"{r:.1f}" for r in meter.rss))


if __name__ == "__main__":
    main()

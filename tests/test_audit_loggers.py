"""The audit's picture reaches every logger: CSV (PNG files), MLflow (artifacts on a local
file store), W&B (offline), and no logger at all (PNG files under the root folder)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger
from PIL import Image
from test_audit import UserNet, loaders, quiet_trainer

from diffcam_lightning import CAMAudit
from diffcam_lightning.audit.sinks import AuditPicture, grid_writer, write_png_for_logger, write_tensorboard

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

# 3 rows x (input + saliency + 9 default methods) cells of 96 px (16 px upscaled x6) with padding 2,
# under a 24 px title row, right of a 96 px column of row labels
GRID_SHAPE = (24 + 3 * 98 + 2, 96 + 11 * 98 + 2, 3)


def fit_with(tmp_path: Path, logger, epochs: int = 2) -> L.Trainer:
    L.seed_everything(0)
    train, val = loaders(saliency=True)
    trainer = quiet_trainer(
        tmp_path, logger=logger, callbacks=[CAMAudit(audit_size=6, grid_images=3)], max_epochs=epochs
    )
    trainer.fit(UserNet(), train, val)
    return trainer


def check_png(path: Path) -> None:
    with Image.open(path) as image:
        array = np.asarray(image)
        assert image.text["columns"].startswith("input | saliency | gradcam")
    assert array.shape == GRID_SHAPE and array.std() > 0  # a real picture, not a blank


def test_csv_logger_gets_png_files_under_its_log_dir(tmp_path):
    logger = CSVLogger(str(tmp_path), name="csv")
    fit_with(tmp_path, logger)
    files = sorted((Path(logger.log_dir) / "cam_audit").glob("*.png"))
    assert [f.name for f in files] == ["epoch=0-step=3.png", "epoch=1-step=6.png"]
    for f in files:
        check_png(f)


def test_no_logger_gets_png_files_under_the_root_dir(tmp_path):
    fit_with(tmp_path, False, epochs=1)
    files = sorted((tmp_path / "cam_audit").glob("*.png"))
    assert [f.name for f in files] == ["epoch=0-step=3.png"]
    check_png(files[0])


def test_mlflow_logger_gets_artifacts_on_a_local_file_store(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    # a local SQLite file and a local artifact folder (MLflow 3 keeps ./mlruns only behind an opt-out)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLFlowLogger(experiment_name="audit", tracking_uri=uri, artifact_location=(tmp_path / "art").as_uri())
    # Known limit (README): MLflow allows no '+' in metric names; Lightning renames gradcam++ to gradcam
    with pytest.warns(RuntimeWarning, match=r"MLFlow only allows .* Replacing cam_audit/\S+\+\+ with"):
        fit_with(tmp_path, logger)
    client = MlflowClient(tracking_uri=uri)
    names = sorted(Path(a.path).name for a in client.list_artifacts(logger.run_id, "cam_audit"))
    assert names == ["columns.txt", "epoch=0-step=3.png", "epoch=1-step=6.png"]
    local = client.download_artifacts(logger.run_id, "cam_audit/epoch=1-step=6.png", str(tmp_path / "dl"))
    with Image.open(local) as image:
        array = np.asarray(image)
    assert array.shape == GRID_SHAPE and array.std() > 0
    assert client.get_run(logger.run_id).data.metrics["cam_audit/alarm"] in (0.0, 1.0)  # scalars too


def test_wandb_logger_offline_logs_the_grid(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(project="audit", save_dir=str(tmp_path), offline=True)
    fit_with(tmp_path, logger, epochs=1)
    logger.experiment.finish()
    images = sorted(tmp_path.rglob("media/images/cam_audit/grid_*.png"))
    assert len(images) == 1, sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    with Image.open(images[0]) as image:
        assert np.asarray(image).shape[:2] == GRID_SHAPE[:2]


class MyLogger(Logger):
    """A user's own logger without an image API."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    name = "mine"
    version = 0

    @property
    def log_dir(self) -> str:
        return str(self.root / "mine")

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_writers_are_looked_up_by_logger_class_subclasses_included(tmp_path):
    class MyTensorBoard(TensorBoardLogger):
        pass

    assert grid_writer(MyTensorBoard(str(tmp_path))) is write_tensorboard
    assert grid_writer(MyLogger(tmp_path)) is write_png_for_logger
    grid = torch.rand(3, 20, 30)
    write_png_for_logger(MyLogger(tmp_path), AuditPicture(grid, ["input", "gradcam"], "cam_audit", 4, 40))
    path = tmp_path / "mine" / "cam_audit" / "epoch=4-step=40.png"
    with Image.open(path) as image:
        assert image.text["columns"] == "input | gradcam"
        assert np.abs(np.asarray(image) / 255.0 - grid.permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6

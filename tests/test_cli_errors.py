"""User-input errors at the command line, as a user's shell sees them (subprocesses): one
``error: ...`` line naming the value, exit code 2, no traceback unless asked for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffcam_lightning.shipped import CONFIGS_DIR  # the shipped configs (package data)

ROOT = Path(__file__).resolve().parents[1]
SHAM = str(CONFIGS_DIR / "synthetic_sham.yaml")


def diffcam(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env}
    environment.pop("DIFFCAM_TRACEBACK", None) if "DIFFCAM_TRACEBACK" not in env else None
    return subprocess.run(
        [sys.executable, "-m", "diffcam_lightning.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )


def assert_short_error(proc: subprocess.CompletedProcess, *named: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for value in named:
        assert value in errors[0], errors[0]
    return errors[0]


def test_fit_with_a_missing_data_folder(tmp_path):
    proc = diffcam(
        "fit",
        "--data.class_path=diffcam_lightning.data.ImageFolderDataModule",
        "--data.init_args.train_dir=nowhere",
        cwd=tmp_path,
    )
    assert_short_error(proc, "'nowhere'", "does not exist")


def test_test_with_a_text_file_as_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    proc = diffcam("test", "--config", SHAM, "--ckpt_path", "notes.txt", cwd=tmp_path)
    assert_short_error(proc, "'notes.txt'", "not a PyTorch Lightning checkpoint")


def test_unknown_method_in_a_config(tmp_path):
    (tmp_path / "mine.yaml").write_text("model:\n  saliency_method: gradcamm\n")
    proc = diffcam("fit", "--config", SHAM, "--config", "mine.yaml", cwd=tmp_path)
    assert_short_error(proc, "'gradcamm'", "gradcam++")  # the value and the valid choices


def test_checkpoint_of_another_model_and_a_plain_weights_file(tmp_path):
    torch.save(
        {
            "state_dict": {"layer.weight": torch.zeros(2, 2)},
            "pytorch-lightning_version": "2.6.6",
            "hyper_parameters": {"width": 32},
        },
        tmp_path / "other.ckpt",
    )
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "weights.pt")
    proc = diffcam("validate", "--config", SHAM, "--ckpt_path", "other.ckpt", cwd=tmp_path)
    assert_short_error(proc, "'other.ckpt'", "another model", "width")
    proc = diffcam("test", "--config", SHAM, "--ckpt_path", "weights.pt", cwd=tmp_path)
    assert_short_error(proc, "'weights.pt'", "not a PyTorch Lightning checkpoint", "weights_file")


def test_the_environment_variable_shows_the_traceback(tmp_path):
    proc = diffcam(
        "fit",
        "--data.class_path=diffcam_lightning.data.ImageFolderDataModule",
        "--data.init_args.train_dir=nowhere",
        cwd=tmp_path,
        DIFFCAM_TRACEBACK="1",
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "DataError" in proc.stderr


def test_a_lightning_checkpoint_with_other_weights_is_named(tmp_path):
    from diffcam_lightning import SaliencyClassifier
    from diffcam_lightning.errors import CheckpointError
    from diffcam_lightning.models.checkpoints import check_checkpoint_fits

    model = SaliencyClassifier(num_classes=3)
    state = dict(model.state_dict().items())
    torch.save({"state_dict": state, "pytorch-lightning_version": "2.6.6"}, tmp_path / "same.ckpt")
    check_checkpoint_fits(tmp_path / "same.ckpt", model)  # its own checkpoint passes
    with pytest.raises(CheckpointError, match=r"same.ckpt.*another model.*SaliencyClassifier\(test_resnet\).*shape"):
        check_checkpoint_fits(tmp_path / "same.ckpt", SaliencyClassifier(num_classes=5))

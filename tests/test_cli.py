"""The ``diffcam`` CLI: a user's subprocess call, every shipped config parses, the
num_classes link, unknown keys refused, fit -> test/predict from a checkpoint."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningDataModule

from diffcam_lightning import SaliencyClassifier
from diffcam_lightning.cli import DiffcamCLI, main
from diffcam_lightning.shipped import CONFIGS_DIR  # the shipped configs (package data)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(CONFIGS_DIR.glob("*.yaml"))
SHAM = str(CONFIGS_DIR / "synthetic_sham.yaml")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
SMALL = [
    "--data.init_args.train_size=32",
    "--data.init_args.val_size=16",
    "--data.init_args.test_size=16",
    "--data.init_args.batch_size=8",
    "--data.init_args.image_size=48",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    """LightningCLI would otherwise see pytest's own arguments beside ``args``."""
    monkeypatch.setattr(sys, "argv", ["diffcam"])


def test_shipped_configs_are_the_issue_list():
    names = {p.name for p in CONFIGS}
    assert {
        "synthetic_human.yaml",
        "synthetic_sham.yaml",
        "densenet121_sham.yaml",
        "resnet50_sham.yaml",
        "inception_v3_sham.yaml",
        "convnext_tiny_sham.yaml",
        "imagenet_sham_finetune.yaml",
    } <= names


def test_fast_dev_run_as_a_user_calls_it(tmp_path):
    exe = Path(sys.executable).with_name("diffcam")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "diffcam_lightning.cli"]
    proc = subprocess.run(
        [*cmd, "fit", "--config", SHAM, "--trainer.fast_dev_run=true"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "fast_dev_run" in out and "Traceback" not in out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(config, capsys):
    report = config.name.startswith("report_")  # `diffcam report` configs have their own parser
    with pytest.raises(SystemExit) as exit_info:
        main(["report" if report else "fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    if report:
        assert printed.startswith("report:")
    else:
        assert "class_path: diffcam_lightning.data." in printed and "saliency_target:" in printed


def test_unknown_key_is_refused_and_named(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SHAM, "--model.saliency_wieght=2", "--print_config"])
    assert exit_info.value.code != 0
    assert "saliency_wieght" in capsys.readouterr().err


def test_num_classes_follows_the_datamodule(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cli = DiffcamCLI(
        SaliencyClassifier,
        LightningDataModule,
        subclass_mode_data=True,
        run=False,
        args=["--config", SHAM, "--data.init_args.preset=many", "--trainer.logger=false"],
        auto_configure_optimizers=False,
    )
    assert cli.datamodule.num_classes == 100 and cli.model.hparams.num_classes == 100
    assert cli.model.model.get_classifier().out_features == 100
    assert isinstance(cli.model.configure_optimizers(), torch.optim.Adam)  # the config's optimizer


# A 4-step SHAM run: its near-random ++ maps are the same for every image, which the audit's
# dependence rule reports at the first audit (README: "What the audit can and cannot detect").
@pytest.mark.filterwarnings("ignore:CAMAudit fooling alarm:UserWarning")
def test_fit_then_test_validate_predict_from_the_checkpoint(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", SHAM, "--trainer.max_epochs=1", "--trainer.default_root_dir=out", *QUIET, *SMALL])
    ckpts = sorted(tmp_path.rglob("last.ckpt"))
    assert ckpts, list(tmp_path.rglob("*"))
    assert sorted(tmp_path.rglob("events.out.tfevents*"))  # TensorBoard, where the README says to look
    model = SaliencyClassifier.load_from_checkpoint(ckpts[0])
    assert model.hparams.saliency_target == "sham"
    for command in ("validate", "test", "predict"):
        main([command, "--config", SHAM, "--ckpt_path", str(ckpts[0]), *QUIET, *SMALL])  # a new log version each


@pytest.mark.parametrize(
    "network",
    [
        ["--model.model_name=torchvision:resnet18", "--model.model_kwargs=null"],
        [
            "--model.network=tests.test_sources.TinyNet",
            "--model.network.init_args.num_classes=7",
            "--model.model_kwargs=null",
        ],
    ],
    ids=["torchvision", "class_path"],
)
def test_fit_with_a_torchvision_or_class_path_network(monkeypatch, tmp_path, network):
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            SHAM,
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=1",
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
            "--trainer.default_root_dir=out",
            "--model.sham_entropy=1.0",
            *network,
            *QUIET,
            *SMALL,
        ]
    )
    ckpt = sorted(tmp_path.rglob("*.ckpt"))[-1]
    from diffcam_lightning.data import SyntheticDataModule
    from diffcam_lightning.models.sources import load_model

    loaded = load_model(str(ckpt))
    assert type(loaded.model).__name__ == ("ResNet" if "torchvision" in network[0] else "TinyNet")
    assert loaded.num_classes == 7 and loaded.class_names == SyntheticDataModule(preset="few").classes

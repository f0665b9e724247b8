"""The audit's TensorBoard review (issue 19): the event file of a short fit holds the Custom
Scalars layout (one chart per figure family, a line per method, written once), the HParams
experiment with the audit's metrics, each alarm's message as text; the grid is labelled
inside the picture, with cells of at least 96 px."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from test_audit import UserNet, loaders, quiet_trainer
from torchvision.utils import make_grid

from diffcam_lightning import CAMAudit
from diffcam_lightning.audit.render import MIN_CELL, audit_grid
from diffcam_lightning.audit.review import custom_scalars_layout, families

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

METHODS = ("gradcam", "gradcam++", "meandiffgradcam", "meandiffgradcam++")


class SavedNet(UserNet):
    """UserNet with its hyperparameters saved (what the HParams tab shows)."""

    def __init__(self, classes: int = 4, dropout: float = 0.2) -> None:
        super().__init__(classes, dropout)
        self.save_hyperparameters()


def short_fit(tmp_path: Path, epochs: int = 2) -> TensorBoardLogger:
    """Two epochs with the SHAM rule at 1.01 (an MSE <= 1 is always below it): an alarm every audit."""
    L.seed_everything(0)
    logger = TensorBoardLogger(str(tmp_path), name="run")
    audit = CAMAudit(methods=METHODS, audit_size=8, grid_images=2, sham_threshold=1.01)
    train, val = loaders(saliency=True)
    trainer = quiet_trainer(tmp_path, logger=logger, callbacks=[audit], max_epochs=epochs)
    with pytest.warns(UserWarning, match="fooling alarm"):
        trainer.fit(SavedNet(), train, val)
    return logger


def read_events(log_dir: str):
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    acc = EventAccumulator(log_dir, size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    return acc


def scalar_tags(acc) -> set[str]:
    return {tag for tag, content in acc.PluginTagToContent("scalars").items()}


def test_event_file_holds_layout_hparams_and_alarm_text(tmp_path):
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.hparams import plugin_data_pb2

    logger = short_fit(tmp_path)
    acc = read_events(logger.log_dir)
    scalars = scalar_tags(acc)

    # Custom Scalars: one layout for the run (two audits), one chart per family, a line per method
    layouts = acc.Tensors("custom_scalars__config__")
    assert len(layouts) == 1
    layout = layout_pb2.Layout.FromString(layouts[0].tensor_proto.string_val[0])
    [category] = layout.category
    assert category.title == "cam_audit"
    charts = {chart.title: chart.multiline.tag for chart in category.chart}
    audit_tags = {t for t in scalars if t.startswith("cam_audit/")}
    assert {"alarm", "drift", "entropy", "sham_mse", "susceptibility", "saliency_mse", "pointing"} <= set(charts)
    for family in ("entropy", "sham_mse", "susceptibility"):
        [regex] = charts[family]
        lines = {t for t in audit_tags if re.match(regex, t)}
        assert lines == {f"cam_audit/{family}/{m}" for m in METHODS}, (family, sorted(lines))
    [regex] = charts["drift"]
    assert {t for t in audit_tags if re.match(regex, t)} == {
        "cam_audit/drift/meandiffgradcam",
        "cam_audit/drift/meandiffgradcam++",
    }
    [regex] = charts["alarm"]  # the alarm and each of its rules
    alarm_lines = {t for t in audit_tags if re.match(regex, t)}
    assert "cam_audit/alarm" in alarm_lines and "cam_audit/alarm/sham" in alarm_lines
    # every logged audit scalar is on exactly one chart
    for tag in audit_tags - {"cam_audit/first_alarm_epoch"}:
        assert sum(bool(re.match(r, tag)) for rs in charts.values() for r in rs) == 1, tag

    # HParams: the experiment lists the final val/acc, the alarm and its first epoch as metrics
    content = acc.PluginTagToContent("hparams")["_hparams_/experiment"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    names = [m.name.tag for m in experiment.metric_infos]
    assert names == ["val/acc", "cam_audit/alarm", "cam_audit/first_alarm_epoch"]
    assert {h.name for h in experiment.hparam_infos} == {"classes", "dropout"}  # the module's hyperparameters
    first = acc.Tensors("cam_audit/first_alarm_epoch")
    assert [float(torch.tensor(e.tensor_proto.float_val)[0]) for e in first] == [0.0]  # fired at epoch 0

    # the alarm's full message in the Text tab, at each audit's step
    texts = acc.Tensors("cam_audit/alarm_message/text_summary")
    assert [e.step for e in texts] == [3, 6]
    message = texts[-1].tensor_proto.string_val[0].decode()
    assert message.startswith("CAMAudit fooling alarm at epoch 1 (step 6): ") and "sham" in message


def test_a_family_added_later_gets_its_chart():
    layout = custom_scalars_layout(
        ["behaviour/gradcam", "behaviour/meandiffgradcam", "alarm", "alarm/drift"], "cam_audit"
    )
    charts = layout["cam_audit"]
    assert list(charts) == ["alarm", "behaviour"] == families(["behaviour/x", "alarm", "alarm/y"])  # the alarm first
    [regex] = charts["behaviour"][1]
    assert re.match(regex, "cam_audit/behaviour/gradcam++") and not re.match(regex, "cam_audit/behaviourx/gradcam")
    [regex] = charts["alarm"][1]
    assert re.match(regex, "cam_audit/alarm") and not re.match(regex, "cam_audit/alarm_message")


def test_grid_grows_with_its_title_row_and_row_labels():
    images, maps = torch.rand(2, 3, 16, 16), {m: torch.rand(2, 4, 4) for m in METHODS}
    plain, titles = audit_grid(images, maps)
    labelled, _ = audit_grid(images, maps, row_labels=["explained: 0\npredicted: 1", "explained: 2\npredicted: 2"])
    cell = 16 * 6  # the smallest whole upscaling of 16 px that reaches 96 px
    assert cell >= MIN_CELL and titles == ["input", *METHODS]
    unlabelled = make_grid(torch.rand(2 * 5, 3, cell, cell), nrow=5, padding=2)  # the cells alone
    title_h = plain.shape[1] - unlabelled.shape[1]
    assert title_h > 0 and plain.shape[2] == unlabelled.shape[2]  # a title row, nothing beside
    assert labelled.shape[1] == plain.shape[1] and labelled.shape[2] == plain.shape[2] + cell  # + the label column
    assert (plain[:, :title_h] < 0.5).any()  # text drawn in the title row
    assert (labelled[:, title_h:, :cell] < 0.5).any()  # and in the label column
    # the cells under the title row are the unlabelled picture's, unchanged
    first_cell = plain[:, title_h + 2 : title_h + 2 + cell, 2 : 2 + cell]
    upscaled = torch.nn.functional.interpolate(images[:1], scale_factor=6, mode="nearest")[0]
    lo, hi = images[0].min(), images[0].max()
    expected = ((upscaled - lo) / (hi - lo + 1e-7) * 255).round() / 255
    assert torch.allclose(first_cell, expected, atol=1 / 255 + 1e-6)


def test_row_labels_must_match_the_images():
    with pytest.raises(ValueError, match="1 row labels for 2 images"):
        audit_grid(torch.rand(2, 3, 8, 8), {"gradcam": torch.rand(2, 4, 4)}, row_labels=["x"])

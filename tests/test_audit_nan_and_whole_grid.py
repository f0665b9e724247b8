"""The audit with NaN scores and with a SHAM that covers the whole CAM grid (issue 11,
items 4 and 5): NaN is left out of means and counted, never fires or silences the alarm;
a whole-grid SHAM switches the SHAM rule off, saying so once."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from test_audit import FEW, UserNet, quiet_trainer, tensors
from torch.utils.data import DataLoader, Subset, TensorDataset

from diffcam_lightning import CAMAudit
from diffcam_lightning.audit import AuditScores

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),  # Lightning's own deprecation
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
]


def audit(tmp_path, model, dataset, **kw) -> CAMAudit:
    callback = CAMAudit(audit_size=len(dataset), dataset=dataset, methods=FEW, log_images=False, **kw)
    quiet_trainer(tmp_path, callbacks=[callback]).validate(model, DataLoader(tensors(8), batch_size=8), verbose=False)
    return callback


def test_audit_scores_leave_nan_out_of_means_and_count_it():
    metric = AuditScores(["a", "b"])
    metric.update({"a": (torch.tensor([0.5, float("nan"), 0.5]), None), "b": (torch.tensor([float("nan")]), None)})
    assert {k: float(v) for k, v in metric.compute().items()} == {"a": 0.5}  # was 0.333 (NaN counted as 0)
    assert metric.excluded == {"a": 1, "b": 1}
    assert {k: float(v) for k, v in metric.compute().items()} == {"a": 0.5}  # compute() has no side effects
    metric.reset()
    assert metric.excluded == {}  # a declared state: reset() clears it


def test_nan_images_are_left_out_counted_and_warned(tmp_path):
    L.seed_everything(0)
    model = UserNet()
    data = tensors(16)
    bad = [3, 10]
    x, y = data.tensors[0].clone(), data.tensors[1]
    x[bad] = float("nan")
    finite = audit(tmp_path, model, Subset(data, [i for i in range(16) if i not in bad])).last_metrics
    with pytest.warns(UserWarning, match=r"2 of 16 audit images gave NaN or infinite maps \(gradcam, "):
        with_nan = audit(tmp_path, model, TensorDataset(x, y)).last_metrics
    for method in FEW:
        assert with_nan[f"nan/{method}"] == 2.0 and finite[f"nan/{method}"] == 0.0
    means = {k: v for k, v in finite.items() if not k.startswith(("nan/", "alarm"))}
    assert means
    for key, value in means.items():  # the mean over the finite images, not NaN counted as 0
        assert with_nan[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_nan_neither_fires_nor_silences_the_alarm(tmp_path):
    """Thresholds just below the finite images' values: the drift rule must fire and the
    SHAM rule must stay silent. Counting NaN as 0 (the old AuditScores) did the opposite."""
    L.seed_everything(0)
    model = UserNet()
    data = tensors(16)
    x, y = data.tensors[0].clone(), data.tensors[1]
    x[[1, 5, 9]] = float("nan")
    finite = audit(tmp_path, model, Subset(data, [i for i in range(16) if i not in (1, 5, 9)])).last_metrics
    drift, sham = finite["drift/meandiffgradcam"], finite["sham_mse/gradcam"]
    assert drift > 1e-4 and sham > 1e-3
    with pytest.warns(UserWarning) as record:
        callback = audit(tmp_path, model, TensorDataset(x, y), drift_threshold=0.95 * drift, sham_threshold=0.95 * sham)
    assert callback.alarm
    alarm = [str(w.message) for w in record if "fooling alarm" in str(w.message)]
    assert len(alarm) == 1 and "rule 'drift'" in alarm[0] and "rule 'sham'" not in alarm[0]


def test_all_nan_scores_say_the_rule_was_not_evaluated(tmp_path):
    L.seed_everything(0)
    data = tensors(8)
    x = torch.full_like(data.tensors[0], float("nan"))
    with pytest.warns(UserWarning, match="drift rule could not be evaluated"):
        callback = audit(tmp_path, UserNet(), TensorDataset(x, data.tensors[1]))
    assert not callback.alarm and "drift/meandiffgradcam" not in callback.last_metrics


def test_whole_grid_sham_switches_the_sham_rule_off_once(tmp_path):
    """A 10 px input gives UserNet a 5x5 CAM grid: the 3.35-nat SHAM is 25 ones of 25."""
    L.seed_everything(0)
    model = UserNet()
    data = tensors(16, size=10)
    callback = CAMAudit(audit_size=16, dataset=data, methods=FEW, log_images=False, sham_threshold=1.0)
    trainer = quiet_trainer(tmp_path, callbacks=[callback])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(2):
            trainer.validate(model, DataLoader(tensors(8, size=10), batch_size=8), verbose=False)
    covers = [w for w in record if "covers every pixel of the 5x5 CAM grid" in str(w.message)]
    assert len(covers) == 1 and "SHAM rule is off" in str(covers[0].message)
    assert not any(k.startswith("sham_mse/") for k in callback.last_metrics)
    assert not any("aligns with the SHAM" in str(w.message) for w in record)  # threshold 1.0 would always fire

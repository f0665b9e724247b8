"""The fooling alarm on the embedded synthetic data: it fires for a model trained a few
epochs against the SHAM and stays off for the same model trained with human saliency."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from test_audit import quiet_trainer

from diffcam_lightning import CAMAudit, SaliencyClassifier, SyntheticDataModule

EPOCHS = 3


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def fit(regime: str) -> tuple[CAMAudit, dict, list[str]]:
    L.seed_everything(0)
    model = SaliencyClassifier(
        model_name="test_resnet",
        model_kwargs={"output_stride": 8},
        saliency_target=regime,
        optimizer=lambda params: torch.optim.Adam(params, lr=0.005),
    )  # 48 px images -> a 6x6 CAM grid; the paper's 3.35-nat border SHAM for both model and audit
    data = SyntheticDataModule(image_size=48, train_size=320, val_size=64, test_size=32, batch_size=32)
    audit = CAMAudit(every_n_epochs=EPOCHS, log_images=False)  # default thresholds
    trainer = quiet_trainer(max_epochs=EPOCHS, limit_val_batches=1, callbacks=[audit])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data)
    alarms = [str(w.message) for w in caught if "fooling alarm" in str(w.message)]
    return audit, {k: float(v) for k, v in trainer.callback_metrics.items()}, alarms


@pytest.mark.parametrize("regime, fires", [("sham", True), ("human", False)])
def test_fooling_alarm(regime, fires):
    audit, metrics, alarms = fit(regime)
    assert metrics["val/acc"] > 0.5  # the model learned the task either way
    assert metrics["cam_audit/alarm"] == float(fires), audit.last_metrics
    assert bool(alarms) is fires and audit.alarm is fires
    drift, sham = metrics["cam_audit/drift/meandiffgradcam"], metrics["cam_audit/sham_mse/gradcam"]
    if fires:
        assert "rule 'drift' on meandiffgradcam" in alarms[0]
        assert sham < metrics["cam_audit/sham_mse/meandiffgradcam"]  # GradCAM, not MeanDiff, went to the SHAM
    else:
        assert drift < 0.02 and sham > 0.4

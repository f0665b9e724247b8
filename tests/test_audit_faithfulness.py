"""CAMAudit(metrics=...): opt-in faithfulness and localisation metrics, logged per method,
equal to the metrics module on the same audit images and maps."""

from __future__ import annotations

import pytest
import torch
from test_audit import UserNet, loaders, quiet_trainer

from diffcam_lightning import CAMAudit, CAMEngine
from diffcam_lightning.cams import metrics as M

pytestmark = [
    pytest.mark.usefixtures("one_thread"),  # see conftest.py
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),  # lightning's own deprecation
]

METHODS = ("gradcam", "layercam", "meandifflayercam")


def test_opt_in_metrics_are_logged_per_method_and_equal_the_metrics_module(tmp_path):
    torch.manual_seed(0)
    model = UserNet()
    _, val = loaders(saliency=True)
    audit = CAMAudit(
        audit_size=8,
        methods=METHODS,
        log_images=False,
        batch_size=4,
        metrics=["deletion", "insertion", "average_drop", "road_combined", "relevance_mass"],
        metric_options={"steps": 4, "percentiles": (30, 70)},
    )
    (logged,) = quiet_trainer(tmp_path, callbacks=[audit]).validate(model, val)
    for metric in ("deletion", "insertion", "average_drop", "road_combined", "relevance_mass"):
        for method in METHODS:
            assert f"cam_audit/{metric}/{method}" in logged, (metric, method)
    # the same numbers from the metrics module on the audit set
    images, labels = audit.audit_set.images, audit.audit_set.labels
    model.eval()
    maps = CAMEngine(model, "features")(images, targets=labels, methods=METHODS)
    for method in METHODS:
        direct = M.deletion_insertion(model, images, maps[method], labels, steps=4)
        assert abs(logged[f"cam_audit/deletion/{method}"] - direct["deletion"].mean().item()) < 1e-5
        assert abs(logged[f"cam_audit/insertion/{method}"] - direct["insertion"].mean().item()) < 1e-5
        mass = M.relevance_mass(maps[method], audit.audit_set.saliency)
        assert abs(logged[f"cam_audit/relevance_mass/{method}"] - mass.mean().item()) < 1e-5


def test_metrics_are_off_by_default_and_bad_names_fail_early(tmp_path):
    torch.manual_seed(0)
    (logged,) = quiet_trainer(tmp_path, callbacks=[CAMAudit(audit_size=8, methods=METHODS, log_images=False)]).validate(
        UserNet(), loaders()[1]
    )
    assert not any(k.startswith(("cam_audit/deletion", "cam_audit/insertion")) for k in logged)
    with pytest.raises(ValueError, match=r"Unknown CAM metric 'auc'; valid: deletion, insertion"):
        CAMAudit(metrics=["auc"])


def test_misspelled_metric_options_fail_at_construction():
    with pytest.raises(
        ValueError, match=r"\['step'\] are taken by none of the metrics \['deletion', 'insertion'\]; valid: steps"
    ):
        CAMAudit(metrics=["deletion", "insertion"], metric_options={"step": 2})
    with pytest.raises(ValueError, match=r"\['steps'\] are taken by none of the metrics \[\]"):
        CAMAudit(metric_options={"steps": 2})
    CAMAudit(metrics=["road_morf", "relevance_mass"], metric_options={"percentiles": (50,)})  # valid


# every registered metric that needs no masks, with options small enough for a test
ALL_OPTIONS = {
    "steps": 3,
    "percentiles": (50,),
    "features_in_step": 3 * 64,
    "samples": 2,
    "runs": 4,
    "subset_size": 20,
    "regions": 3,
    "patch_size": 4,
}


def test_every_metric_is_usable_from_the_audit_and_equals_the_metrics_module(tmp_path):
    names = [n for n, spec in M.METRICS.items() if not spec.needs_masks]
    torch.manual_seed(0)
    model = UserNet()
    _, val = loaders()
    audit = CAMAudit(
        audit_size=4,
        methods=("gradcam", "meandiffgradcam"),
        log_images=False,
        batch_size=4,
        metrics=names,
        metric_options=ALL_OPTIONS,
    )
    (logged,) = quiet_trainer(tmp_path, callbacks=[audit]).validate(model, val)
    images, labels = audit.audit_set.images, audit.audit_set.labels
    model.eval()
    engine = CAMEngine(model, "features")
    for method in ("gradcam", "meandiffgradcam"):
        maps = engine(images, targets=labels, methods=method)[method]
        options = {k: v for k, v in ALL_OPTIONS.items() if k in M.accepted_options(names)}
        options["generator"] = torch.Generator().manual_seed(0)  # the audit's ROAD noise
        direct = M.evaluate(names, model, images, maps, labels, explain=M.explainer(engine, method), **options)
        for name in names:
            key = f"cam_audit/{name}/{method}"
            assert key in logged, key
            assert logged[key] == pytest.approx(direct[name].mean().item(), abs=1e-5, nan_ok=True), key


def test_every_metric_is_usable_from_the_report_table():
    from diffcam_lightning.report.faithfulness import FaithfulnessSpec, faithfulness_scores, faithfulness_table

    names = [n for n, spec in M.METRICS.items() if not spec.needs_masks]
    torch.manual_seed(0)
    model = UserNet().eval()
    x, labels = torch.rand(3, 3, 16, 16), torch.tensor([0, 1, 2])
    spec = FaithfulnessSpec(metrics=names, methods=["gradcam"], steps=3)
    metrics, methods = spec.resolved(["gradcam", "layercam"])
    engine = CAMEngine(model, "features")
    maps = engine(x, targets=labels, methods="gradcam")
    scores = {}
    for kind in ("clean", "sham"):
        values = faithfulness_scores(model, x, maps, labels, metrics, methods, spec, engine)
        scores.update({("net", f"{metric}_{kind}", method): v.numpy() for (metric, method), v in values.items()})
    (row,) = faithfulness_table(scores, metrics, methods).rows
    assert len(row) == 2 + 3 * len(names) and "-" not in row

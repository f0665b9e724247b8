"""The attack-agnostic alarm: its signals on constructed maps, its rules, and CAMAudit's use of them."""

from __future__ import annotations

import pytest
import torch
from test_audit import quiet_trainer

from diffcam_lightning.audit import (
    ALARM_RULES,
    AuditMaps,
    CAMAudit,
    ScoreContext,
    build_rules,
    dependence,
    evaluate,
    score_batch,
    spread,
)
from diffcam_lightning.saliency import sham_target


def blobs(centres: torch.Tensor, size: int = 8, sigma: float = 1.2) -> torch.Tensor:
    """One Gaussian blob per image at ``centres [N, 2]`` (row, col): maps that follow an object."""
    i, j = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    d2 = (i - centres[:, 0, None, None]) ** 2 + (j - centres[:, 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * sigma**2))


def following(n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return blobs(torch.rand(n, 2, generator=g) * 7)


def identical(n: int = 64, pattern: str = "corner") -> torch.Tensor:
    return sham_target((8, 8), 3.35, pattern).expand(n, 8, 8).clone()


@pytest.mark.parametrize("pattern", ["border", "corner", "patch", "random"])
def test_identical_maps_sit_at_the_extreme_of_spread_and_dependence(pattern):
    same = identical(pattern=pattern)
    assert spread(same).item() == pytest.approx(0.0, abs=1e-7)
    assert dependence(same).item() == pytest.approx(0.0, abs=1e-7)
    # a little per-image noise on one mask stays near the extreme
    noisy = same + 0.05 * torch.rand(same.shape, generator=torch.Generator().manual_seed(1))
    assert dependence(noisy).item() < 0.05


def test_object_following_maps_do_not():
    maps = following()
    assert spread(maps).item() > 0.03
    assert dependence(maps).item() > 0.8
    assert dependence(torch.zeros(4, 8, 8)).item() == 0.0  # all-constant maps: input-independent, no NaN


def test_dependence_does_not_care_which_mask_the_attacker_chose():
    values = [
        dependence(identical(pattern=p) * 0.8 + 0.2 * following()).item()
        for p in ("border", "corner", "patch", "random")
    ]
    assert max(values) < 0.5 and max(values) - min(values) < 0.2
    assert dependence(following()).item() > 2 * max(values)


def test_disagreement_with_the_gradient_free_cam():
    obj = following()
    ctx = ScoreContext({"gradcam": identical(), "meandiffgradcam": obj.clone(), "eigencam": obj}, sham_target((8, 8)))
    scores = {k: v.mean().item() for k, (v, _) in score_batch(ctx, ["disagreement"]).items()}
    assert set(scores) == {"disagreement/gradcam", "disagreement/meandiffgradcam"}
    assert scores["disagreement/meandiffgradcam"] == pytest.approx(0.0, abs=1e-7)
    assert scores["disagreement/gradcam"] > 0.1
    without = ScoreContext({"gradcam": obj}, sham_target((8, 8)))
    assert score_batch(without, ["disagreement"]) == {}


def test_audit_maps_gathers_batches_in_order():
    metric = AuditMaps(["gradcam", "eigencam"])
    a, b = following(4, seed=0), following(3, seed=1)
    metric.update({"gradcam": a})
    metric.update({"gradcam": b})
    out = metric.compute()
    assert list(out) == ["gradcam"] and torch.equal(out["gradcam"], torch.cat([a, b]))
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):  # torchmetrics' own notice
        assert metric.compute() == {}


def test_rules_fire_by_name_method_and_value():
    rules = build_rules(None, ("meandiffgradcam", "gradcam"), 0.1, 0.1)
    assert [r.name for r in rules] == [n for n, r in ALARM_RULES.items() if r.default]
    t = ALARM_RULES["dependence"].threshold
    values = {
        "dependence/gradcam": t + 0.1,
        "dependence/lsediffgradcam": t - 0.1,
        "dependence/eigencam": 0.0,
        "drift/meandiffgradcam": 0.05,
        "drift/maxdiffgradcam": 0.9,
        "sham_mse/gradcam": 0.3,
        "sham_mse/meandiffgradcam": 0.01,
    }
    fired = evaluate(values, rules)
    # the gradient-free CAM and the methods outside the paper rules' pair are not judged by them
    assert [(f.rule, f.method) for f in fired] == [("dependence", "lsediffgradcam")]
    assert "rule 'dependence' on lsediffgradcam" in fired[0].message() and f"{t - 0.1:.4f}" in fired[0].message()
    off = build_rules({"dependence": None}, ("meandiffgradcam", "gradcam"), 0.1, None)
    assert [r.name for r in off] == [n for n, r in ALARM_RULES.items() if r.default and n not in ("dependence", "sham")]
    assert evaluate(values, off) == []
    with pytest.raises(ValueError, match="Unknown CAMAudit alarm rule 'spred'; valid: dependence"):
        build_rules({"spred": 0.1}, ("meandiffgradcam", "gradcam"), 0.1, 0.1)


def test_camaudit_takes_rule_thresholds():
    audit = CAMAudit(alarm_rules={"dependence": 0.3}, sham_threshold=None)
    behavioural = {n: r.threshold for n, r in ALARM_RULES.items() if r.gate is not None and r.default}  # issue 18's
    assert {r.name: r.threshold for r in audit.rules} == {
        "dependence": 0.3,
        "drift": ALARM_RULES["drift"].threshold,
        **behavioural,
    }
    with pytest.raises(ValueError, match="alarm rule"):
        CAMAudit(alarm_rules={"nope": 1.0})


def test_the_audit_registries_refuse_a_taken_name_unless_replaced():
    """Alarm rules, score families and grid writers are Registry objects: read-only, a taken
    name refused, ``replace=True`` an explicit override, ``unregister`` the way out."""
    from lightning.pytorch.loggers import CSVLogger

    from diffcam_lightning.audit import SCORE_FAMILIES, SCORE_KEYS, AlarmRule, per_method, register_rule, register_score
    from diffcam_lightning.audit.sinks import GRID_WRITERS, grid_writer, register_grid_writer, write_png_for_logger

    with pytest.raises(ValueError, match="already registered"):
        register_rule(AlarmRule("dependence", "dependence", 0.1, below=True))
    with pytest.raises(TypeError):
        ALARM_RULES["dependence"] = ALARM_RULES["dependence"]  # read-only: register_rule is the way in
    with pytest.raises(ValueError, match="verdict must be one of fooled, imprecise"):
        AlarmRule("odd", "odd", 0.1, below=True, verdict="suspicious")
    register_score("peak", keys=per_method("peak"))(lambda ctx: {})
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_score("peak", keys=per_method("peak"))(lambda ctx: {})
        register_score("peak", keys=per_method("top"), reduce="sum", replace=True)(lambda ctx: {})
        assert SCORE_KEYS["peak"](["gradcam"], []) == ["top/gradcam"]
    finally:
        SCORE_FAMILIES.unregister("peak")
    assert "peak" not in SCORE_FAMILIES and "peak" not in SCORE_KEYS

    class Mine(CSVLogger):
        pass

    register_grid_writer(Mine)(lambda logger, picture: None)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_grid_writer(Mine)(lambda logger, picture: None)
    finally:
        GRID_WRITERS.unregister(Mine)
    assert grid_writer(Mine("logs")) is write_png_for_logger


def test_deletion_gap_is_opt_in_and_switched_on_by_name():
    """A clean pretrained EfficientNet-Lite0 has a deletion gap of -0.001..0.30 on the shipped
    photos (experiments/results/behaviour_audit.md): the rule ships off, its signal is still logged."""
    pair = ("meandiffgradcam", "gradcam")
    assert "deletion_gap" in ALARM_RULES and not ALARM_RULES["deletion_gap"].default
    assert "deletion_gap" not in [r.name for r in build_rules(None, pair, 0.1, 0.1)]
    assert "deletion_gap" not in [r.name for r in CAMAudit().rules]
    values = {"decided/behaviour": 1.0, "deletion_gap/gradcam": 0.0}
    assert evaluate(values, build_rules(None, pair, 0.1, 0.1)) == []
    threshold = ALARM_RULES["deletion_gap"].threshold  # the measured one: 0.326
    on = CAMAudit(alarm_rules={"deletion_gap": threshold}).rules
    assert [(r.name, r.threshold) for r in on if r.name == "deletion_gap"] == [("deletion_gap", threshold)]
    assert [(f.rule, f.method, f.verdict) for f in evaluate(values, on)] == [("deletion_gap", "gradcam", "fooled")]
    assert "deletion_gap" not in [r.name for r in CAMAudit(alarm_rules={"deletion_gap": None}).rules]


def _fit(regime: str, epochs: int = 6) -> tuple[CAMAudit, list[str]]:
    """A tiny model (48 px, 6x6 CAM grid, 320 images): an adaptive attack on MeanDiffGradCAM
    with the corner SHAM, or honest human-target training of the same model."""
    import warnings

    import lightning as L

    from diffcam_lightning import SaliencyClassifier, SyntheticDataModule

    L.seed_everything(0)
    attack = {"saliency_target": "sham", "saliency_method": "meandiffgradcam", "sham_pattern": "corner"}
    model = SaliencyClassifier(
        model_name="test_resnet",
        model_kwargs={"output_stride": 8},
        optimizer=lambda params: torch.optim.Adam(params, lr=0.005),
        **(attack if regime == "attack" else {"saliency_target": "human"}),
    )
    data = SyntheticDataModule(image_size=48, train_size=320, val_size=64, test_size=32, batch_size=32)
    audit = CAMAudit(log_images=False)  # the defaults: border SHAM, every rule
    trainer = quiet_trainer(max_epochs=epochs, limit_val_batches=1, callbacks=[audit])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data)
    return audit, [str(w.message) for w in caught if "fooling alarm" in str(w.message)]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("regime", ["attack", "human"])
def test_alarm_catches_an_adaptive_attack_on_meandiffgradcam_and_spares_an_honest_model(regime):
    audit, alarms = _fit(regime)
    values = audit.last_metrics
    assert {"dependence/gradcam", "spread/gradcam", "disagreement/gradcam", "alarm/dependence"} <= set(values)
    if regime == "attack":
        assert alarms and audit.alarm, values
        assert "rule 'dependence' on " in alarms[-1]
        # the paper's rules are blind to it: GradCAM and MeanDiff move together, away from the border
        assert values["alarm/drift"] == 0.0 and values["alarm/sham"] == 0.0
    else:
        assert not alarms and not audit.alarm, values
        assert min(v for k, v in values.items() if k.startswith("dependence/") and k != "dependence/eigencam") > 0.7

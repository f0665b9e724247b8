"""Issue 18: the behaviour-grounded audit signals on constructed cases, the plausible-fooling
alarm with its fooled verdict, the one-shot audit of a finished model, and no effect on training."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from test_audit import quiet_trainer
from torch import nn

from diffcam_lightning import CAMAudit, SaliencyClassifier, SyntheticDataModule
from diffcam_lightning.audit import ALARM_RULES, BehaviourOptions, behaviour_scores, verdict
from diffcam_lightning.audit.alarm import Firing, build_rules, evaluate
from diffcam_lightning.audit.behaviour import random_cells
from diffcam_lightning.data.synthetic import SyntheticShapes, SyntheticSpec

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


class Spot(nn.Module):
    """Class 0's logit is the brightness of one 16x16 patch (CAM cells (0-1, 4-5) of an 8x8 grid): the only pixels that matter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, :, 0:16, 32:48].mean(dim=(1, 2, 3)) * 4
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def spot_case(n: int = 6):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 64, 64, generator=g) * 0.1
    x[:, :, 0:16, 32:48] += 1.0
    maps = {name: torch.zeros(n, 8, 8) for name in ("on", "off", "blank")}
    maps["on"][:, 0:2, 4:6] = 1.0  # on the only pixels that matter
    maps["off"][:, 6:8, 0:2] = 1.0  # on pixels that do not matter
    noise = torch.rand(n, 8, 8, generator=g)  # a map of scattered importance
    maps["noise"] = noise
    return x, torch.zeros(n, dtype=torch.long), maps


def test_a_map_on_the_pixels_that_matter_scores_best_off_them_worst_and_blank_is_not_faithful():
    x, y, maps = spot_case()
    scores, drops = behaviour_scores(Spot(), x, y, maps)
    mean = {k: float(v.mean()) for k, (v, _) in scores.items()}
    # the occlusion reference finds the one region that matters
    assert drops.shape == (6, 4, 4) and bool((drops.flatten(1).argmax(1) == 2).all())
    assert mean["behaviour_agreement/on"] == pytest.approx(1.0, abs=1e-5)
    assert mean["deletion_gap/on"] > 0.3
    for name in ("off", "noise"):
        assert mean[f"behaviour_agreement/{name}"] < 0.5 and mean[f"deletion_gap/{name}"] < 0.1
    assert mean["deletion_gap/off"] <= min(
        mean["deletion_gap/noise"], mean["deletion_gap/on"]
    )  # worst: claims only unused pixels
    assert mean["deletion_gap/off"] < 0.0  # random regions sometimes hit the spot; the off map never does
    assert (
        mean["behaviour_agreement/blank"] == 0.0 and mean["deletion_gap/blank"] == 0.0
    )  # claims nothing: not faithful


def test_plausibility_gap_is_the_map_on_the_annotation_beyond_the_behaviour():
    x, y, maps = spot_case()
    annotation = torch.zeros(6, 64, 64)
    annotation[:, 48:64, 0:16] = 1.0  # the annotator outlined the pixels the model ignores
    scores, _ = behaviour_scores(Spot(), x, y, maps, saliency=annotation)
    gap = {k.split("/")[1]: float(v[m].mean()) for k, (v, m) in scores.items() if k.startswith("plausibility_gap/")}
    assert gap["off"] == pytest.approx(1.0)  # the map shows the annotation, the decision uses the spot
    assert gap["on"] == pytest.approx(0.0) and gap["blank"] == pytest.approx(0.0)
    annotation[:, 0:16, 32:48] = 1.0  # now the annotation also covers the spot: the honest map is not flagged
    scores, _ = behaviour_scores(Spot(), x, y, maps, saliency=annotation)
    assert float(scores["plausibility_gap/on"][0].mean()) == pytest.approx(0.0)


def test_random_regions_belong_to_the_audit_image_not_to_its_batch():
    whole = random_cells(6, (8, 8), 6, 2, torch.device("cpu"))
    assert torch.equal(random_cells(2, (8, 8), 6, 2, torch.device("cpu"), offset=4), whole[4:])
    x, y, maps = spot_case()
    one, _ = behaviour_scores(Spot(), x, y, maps)
    a, _ = behaviour_scores(Spot(), x[:4], y[:4], {k: v[:4] for k, v in maps.items()})
    b, _ = behaviour_scores(Spot(), x[4:], y[4:], {k: v[4:] for k, v in maps.items()}, offset=4)
    for key, (v, _) in one.items():
        assert torch.allclose(v, torch.cat([a[key][0], b[key][0]]), atol=1e-6), key


def test_behaviour_options_and_verdicts():
    with pytest.raises(ValueError, match="fraction"):
        BehaviourOptions(fraction=1.5)
    with pytest.raises(ValueError, match="valid keys: occlusion_grid"):
        CAMAudit(behaviour_options={"grid": 2})
    rules = build_rules(None, ("meandiffgradcam", "gradcam"), 0.1, 0.1)  # the shipped defaults
    decided = {"decided/behaviour": 1.0}
    low_agreement = {**decided, "behaviour_agreement/gradcam": -1.0, "deletion_gap/gradcam": -1.0}
    assert verdict(evaluate(low_agreement, rules)) == "imprecise"  # deletion_gap is opt-in: not judged by default
    fooled = {**low_agreement, "plausibility_gap/gradcam": 0.5}
    assert verdict(evaluate(fooled, rules)) == "fooled"
    with_gap = build_rules(
        {"deletion_gap": ALARM_RULES["deletion_gap"].threshold}, ("meandiffgradcam", "gradcam"), 0.1, 0.1
    )
    assert verdict(evaluate(low_agreement, with_gap)) == "fooled"  # switched on by name, at its measured threshold
    assert verdict(evaluate({**fooled, "decided/behaviour": 0.0}, rules)) is None  # an undecided model is not judged
    assert verdict([]) is None and isinstance(evaluate(fooled, rules)[0], Firing)
    assert ALARM_RULES["plausibility_gap"].verdict == "fooled"


def test_the_cue_variant_hides_the_label_in_a_square_the_annotation_never_marks():
    spec = SyntheticSpec(cue=True)
    full, no_cue, no_object = (SyntheticShapes(8, "val", spec, ablate=a) for a in (None, "cue", "object"))
    for i in range(8):
        cue, obj = full.cue_mask(i).bool(), full[i]["saliency"].bool()
        assert cue.sum() == (2 * round(0.08 * 64)) ** 2 and not (cue & obj).any()  # off the annotated object
        changed = (full[i]["image"] != no_cue[i]["image"]).any(dim=0)
        assert changed.any() and not (changed & ~cue).any()  # painting the cue out changes only its pixels
        changed = (full[i]["image"] != no_object[i]["image"]).any(dim=0)
        assert not (changed & ~obj).any()
    assert torch.equal(
        SyntheticShapes(4, "val")[3]["image"], SyntheticShapes(4, "val", SyntheticSpec(cue=False))[3]["image"]
    )
    with pytest.raises(ValueError, match="Unknown ablate 'cues'"):
        SyntheticShapes(4, "val", spec, ablate="cues")


# ---------------------------------------------------------------- fits on the cue data


def cue_fit(cue: bool, epochs: int = 4) -> tuple[SaliencyClassifier, SyntheticDataModule, CAMAudit, list[str]]:
    """Human-saliency training on GradCAM (weight 3): with the cue, plausible fooling; without
    it (the object decides the label), its clean twin."""
    L.seed_everything(0)
    model = SaliencyClassifier(
        model_name="test_resnet",
        model_kwargs={"output_stride": 8},
        saliency_target="human",
        saliency_weight=3.0,
        optimizer=lambda params: torch.optim.Adam(params, lr=0.005),
    )
    data = SyntheticDataModule(
        num_classes=3, image_size=48, train_size=384, val_size=32, test_size=32, batch_size=32, cue=cue
    )
    audit = CAMAudit(methods=("gradcam", "meandiffgradcam"), every_n_epochs=epochs, log_images=False, reference=None)
    trainer = quiet_trainer(max_epochs=epochs, callbacks=[audit])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, data)
    return model, data, audit, [str(w.message) for w in caught if "CAMAudit" in str(w.message)]


@pytest.fixture(scope="module")
def fooled_fit():
    return cue_fit(cue=True)


def test_a_short_plausible_fooling_fit_raises_the_alarm_naming_the_rule(fooled_fit):
    model, data, audit, messages = fooled_fit
    values = audit.last_metrics
    # the decision uses the cue: painting it out costs most of the accuracy, painting out the object nothing
    val = data.datasets["val"]
    x = torch.stack([val[i]["image"] for i in range(len(val))])
    y = torch.stack([val[i]["label"] for i in range(len(val))])
    no_cue = SyntheticShapes(len(val), "val", val.spec, ablate="cue")
    x_no_cue = torch.stack([no_cue[i]["image"] for i in range(len(val))])
    model.eval()
    with torch.no_grad():
        acc, acc_no_cue = [float((model(v).argmax(1) == y).float().mean()) for v in (x, x_no_cue)]
    assert acc > 0.8 and acc_no_cue < 0.6, (acc, acc_no_cue)
    assert values["pointing/gradcam"] > 0.5  # ... while GradCAM shows the annotated object
    assert audit.alarm and audit.verdict == "fooled" and values["verdict/fooled"] == 1.0
    assert values["alarm/plausibility_gap"] == 1.0
    alarms = [m for m in messages if "fooling alarm" in m]
    assert alarms and "rule 'plausibility_gap' on gradcam" in alarms[-1] and "Verdict: fooled" in alarms[-1]


def test_its_clean_twin_raises_no_fooling_alarm():
    _, _, audit, messages = cue_fit(cue=False)  # the object decides the label: the same training is honest
    values = audit.last_metrics
    assert (
        values["pointing/gradcam"] > 0.5 and values["decided/behaviour"] > 0.5
    )  # judged, and the maps are on the object
    assert not audit.alarm and values["verdict/fooled"] == 0.0, values
    assert not [m for m in messages if "fooling alarm" in m]


def test_one_shot_audit_of_a_finished_model_gives_a_verdict_without_a_reference(fooled_fit):
    model, data, _, _ = fooled_fit
    audit = CAMAudit(methods=("gradcam", "meandiffgradcam"), log_images=False, reference=None)  # no history
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[audit]
    )
    with pytest.warns(UserWarning, match="rule 'plausibility_gap' on gradcam.*Verdict: fooled"):
        trainer.validate(model, data)
    assert audit.reference_maps is None and "susceptibility/gradcam" not in audit.last_metrics
    assert audit.verdict == "fooled" and trainer.callback_metrics["cam_audit/verdict/fooled"] == 1.0

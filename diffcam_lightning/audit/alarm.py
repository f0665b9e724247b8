"""CAMAudit's fooling alarm: named rules over logged signals, thresholds from measured runs.

A rule reads one signal family (``<signal>/<method>`` among the audit's values) and fires
when the value of any method it covers crosses its threshold. The rules that do not need
to know the attack (``dependence`` and the behavioural rules of ``behaviour.py``) look at
every audited gradient CAM; the paper's rules (``drift``, ``sham``) look at the
``alarm_pair`` only, since they encode one attack: on GradCAM, towards the border SHAM.

Each rule gives a *verdict*: ``fooled`` (the maps claim evidence the decision does not use,
or training pulled them away from it) or ``imprecise`` (the maps of an honest model are
coarse or off by a region: worth knowing, not an attack). A behavioural rule only judges an
audit where the model decides most of the behaviour images (``gate``): the explanation of a
model at chance has no decision to be faithful to. Thresholds are measured, not chosen:
see ``experiments/behaviour_audit.py`` (chosen on seed 0, scored on held-out seeds) and
``docs/audit-detection.md``. ``deletion_gap`` is opt-in (it calls a clean pretrained network
fooled); every other rule is on by default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Optional, get_args

from ..cams import GRADIENT_METHODS
from ..registry import Registry

Verdict = Literal["fooled", "imprecise"]
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)  # the most serious first


@dataclass(frozen=True)
class AlarmRule:
    """A named alarm rule over one logged signal (``register_rule`` adds one).

    Args:
        name: the rule's name (``CAMAudit(alarm_rules={name: threshold or None})``).
        signal: the logged family read, ``<signal>/<method>``.
        threshold, below: fires when the value is below (``below=True``) or above it.
        methods: the methods judged (``None``: every audited gradient method).
        meaning: one line for the alarm's message.
        verdict: ``"fooled"`` or ``"imprecise"``.
        gate: ``(key, minimum)``: judged only when the audit's ``key`` value is >= ``minimum``.
        default: ``False`` for an opt-in rule, active only when ``alarm_rules`` gives it a threshold.

    Raises:
        ValueError: a verdict that is not one of ``VERDICTS``.

    Example:
        >>> from diffcam_lightning.audit.alarm import AlarmRule
        >>> rule = AlarmRule("flat", "dependence", 0.55, below=True, meaning="maps ignore the image")
        >>> rule.crossed(0.3), rule.crossed(0.8)
        (True, False)
    """

    name: str
    signal: str
    threshold: float
    below: bool
    methods: Optional[tuple[str, ...]] = None
    meaning: str = ""
    verdict: Verdict = "fooled"
    gate: Optional[tuple[str, float]] = None
    default: bool = True

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(
                f"Alarm rule {self.name!r}: verdict must be one of {', '.join(VERDICTS)}; got {self.verdict!r}."
            )

    def crossed(self, value: float) -> bool:
        return value < self.threshold if self.below else value > self.threshold

    def judged(self, values: Mapping[str, float]) -> bool:
        if self.gate is None:
            return True
        key, minimum = self.gate
        return key in values and float(values[key]) >= minimum


@dataclass(frozen=True)
class Firing:
    """One rule that fired, on one method, with the value that crossed the threshold."""

    rule: str
    method: str
    value: float
    threshold: float
    below: bool
    meaning: str
    verdict: Verdict = "fooled"

    def message(self) -> str:
        side = "<" if self.below else ">"
        return f"rule {self.rule!r} on {self.method}: {self.meaning} ({self.value:.4f} {side} {self.threshold})"


# Defaults measured on the embedded synthetic data: dependence in experiments/results/adaptive_attacks.md,
# drift and sham in benchmarks/README.md ("Alarm thresholds"); CAMAudit's drift_threshold/sham_threshold.
DEFAULT_DEPENDENCE_THRESHOLD = 0.55
DEFAULT_DRIFT_THRESHOLD = 0.1
DEFAULT_SHAM_THRESHOLD = 0.1
# The behavioural rules: chosen on seed 0 of experiments/behaviour_audit.py, scored on seeds 1-2
# (experiments/results/behaviour_audit.md, docs/audit-detection.md): each the midpoint between the
# seed-0 clean controls' extreme (epochs >= 1, the model deciding) and the attack values it must catch.
# deletion_gap is opt-in (default=False): chosen on the seed-0 synthetic controls alone at 0.326
# (clean min 0.334, CE on the cue data, epoch 1), but a clean pretrained EfficientNet-Lite0 on the
# shipped photos sits at -0.001..0.30: counting it as a clean control, no threshold catches a
# seed-0 fooled run. Its signal is still logged; alarm_rules={"deletion_gap": 0.326} turns it on.
DEFAULT_DELETION_GAP_THRESHOLD = 0.326
DEFAULT_PLAUSIBILITY_GAP_THRESHOLD = 0.047  # clean max 0.032 (CE on the cue data)
DEFAULT_AGREEMENT_THRESHOLD = 0.464  # clean min 0.546; an "imprecise" verdict, not a fooling alarm
BEHAVIOUR_GATE = ("decided/behaviour", 0.5)  # the share of behaviour images whose prediction is the explained class
ALARM_RULES: Registry[str, AlarmRule] = Registry("alarm rule")


def register_rule(rule: AlarmRule, *, replace: bool = False) -> AlarmRule:
    """Add a rule (``CAMAudit(alarm_rules={name: threshold or None})`` tunes, disables or,
    for an opt-in rule, enables it); a taken name is refused unless ``replace``."""
    return ALARM_RULES.register(rule.name, rule, replace=replace)


register_rule(
    AlarmRule(
        "dependence",
        "dependence",
        DEFAULT_DEPENDENCE_THRESHOLD,
        below=True,
        meaning="the maps hardly change between images (share of per-image variance)",
    )
)
register_rule(
    AlarmRule(
        "drift",
        "drift",
        DEFAULT_DRIFT_THRESHOLD,
        below=False,
        meaning="drift between DiffGradCAM and its base",
    )
)
register_rule(AlarmRule("sham", "sham_mse", DEFAULT_SHAM_THRESHOLD, below=True, meaning="MSE to the border SHAM"))
register_rule(
    AlarmRule(
        "deletion_gap",
        "deletion_gap",
        DEFAULT_DELETION_GAP_THRESHOLD,
        below=True,
        gate=BEHAVIOUR_GATE,
        default=False,
        meaning="covering the map's top region hurts the decision hardly more than covering random regions "
        "(log-probability drop, top minus random)",
    )
)
register_rule(
    AlarmRule(
        "plausibility_gap",
        "plausibility_gap",
        DEFAULT_PLAUSIBILITY_GAP_THRESHOLD,
        below=False,
        gate=BEHAVIOUR_GATE,
        meaning="the map sits on the annotated pixels more than the model's response to occlusion does",
    )
)
register_rule(
    AlarmRule(
        "behaviour_agreement",
        "behaviour_agreement",
        DEFAULT_AGREEMENT_THRESHOLD,
        below=True,
        gate=BEHAVIOUR_GATE,
        verdict="imprecise",
        meaning="the map correlates weakly with the occlusion reference",
    )
)


def build_rules(
    overrides: Optional[Mapping[str, Optional[float]]],
    alarm_pair: Sequence[str],
    drift_threshold: Optional[float],
    sham_threshold: Optional[float],
) -> list[AlarmRule]:
    """The active rules: the default ones, with the paper's two rules on ``alarm_pair`` at the
    given thresholds, then ``overrides`` (``{rule: threshold}``; ``None`` disables a rule, a
    threshold enables an opt-in one such as ``deletion_gap``)."""
    variant, base = alarm_pair
    thresholds: dict[str, Optional[float]] = {
        name: rule.threshold if rule.default else None for name, rule in ALARM_RULES.items()
    }
    thresholds.update(drift=drift_threshold, sham=sham_threshold)
    for name, value in (overrides or {}).items():
        if name not in ALARM_RULES:
            raise ValueError(f"Unknown CAMAudit alarm rule {name!r}; valid: {', '.join(ALARM_RULES)}.")
        thresholds[name] = value
    scopes = {"drift": (variant,), "sham": (base,)}
    active = {name: value for name, value in thresholds.items() if value is not None}
    return [
        dataclasses.replace(rule, threshold=float(active[name]), methods=scopes.get(name, rule.methods))
        for name, rule in ALARM_RULES.items()
        if name in active
    ]


def fire_rules(values: Mapping[str, float], rules: Sequence[AlarmRule]) -> list[Firing]:
    """Every (rule, method) whose logged value crosses the rule's threshold."""
    fired = []
    for rule in rules:
        if not rule.judged(values):
            continue
        prefix = f"{rule.signal}/"
        for key, value in values.items():
            if not key.startswith(prefix):
                continue
            method = key[len(prefix) :]
            covered = method in GRADIENT_METHODS if rule.methods is None else method in rule.methods
            if covered and rule.crossed(float(value)):
                fired.append(
                    Firing(rule.name, method, float(value), rule.threshold, rule.below, rule.meaning, rule.verdict)
                )
    return fired


evaluate = fire_rules  # the public name before fire_rules (cams.metrics.evaluate is another job)


def verdict(firings: Sequence[Firing]) -> Optional[Verdict]:
    """``"fooled"`` when any fooling rule fired, else ``"imprecise"`` when any rule did, else ``None``."""
    kinds = {f.verdict for f in firings}
    return next((v for v in VERDICTS if v in kinds), None)

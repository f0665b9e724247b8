"""Tables of issue 18's study: thresholds chosen on seed 0, scored on the held-out seeds 1-2.

Reads ``results/behaviour/behaviour_runs.*.jsonl`` (``behaviour_audit.py``) and
``photos.jsonl`` (``behaviour_photos.py``) and writes ``results/behaviour_audit.md``.

Definitions (the ground truth is measured, never read from the alarm's signals):

- *the model decides*: audit accuracy >= 0.5 (the behavioural rules' gate; CAMAudit gates on
  the share of its behaviour images predicted as the explained class);
- *fooling visible*, SHAM attacks: the first epoch >= 1 at which every attacked method
  points at the object less than half as often as in the CE-only controls' last epoch
  (as in ``adaptive_attacks_summary.py``);
- *fooling visible*, cue attacks: the first epoch >= 1 at which the decision uses the cue
  (accuracy with the cue painted out below half the accuracy, the model deciding) while
  every attacked method points at the annotated object on >= 25 % of the audit images (the
  honest CE-only model on the cue data: <= 2 % after its first epoch on seed 0);
- *goal met*: an alarm with verdict *fooled* by the last epoch and at most 2 epochs after
  the fooling became visible; a *false alarm*: a fooled verdict on a clean control at an
  epoch >= 1.

Thresholds: for each rule, on seed 0 only, the threshold that catches the most visibly
fooled seed-0 runs in time with no false alarm on the clean controls it is chosen on (the
midpoint between the attack values it needs and the clean edge); then the alarm is scored on
seeds 1-2. The clean controls a rule is chosen on are the seed-0 synthetic controls (epochs
>= 1) and, for every rule with a *fooled* verdict, the real-network controls too (the clean
pretrained EfficientNet-Lite0 on the shipped photos, whole and centre crops: seedless, one
audit each, so they belong to the choosing set, not the held-out one). The *imprecise* rule
(behaviour_agreement) is chosen on the synthetic controls only: the goal counts fooling
alarms, and an imprecise verdict on a clean model is allowed (the photos' values are
reported beside it).

The rules are then scored twice on the held-out seeds: *as chosen on seed 0* (every rule
that got a threshold) and *as shipped* (CAMAudit's default rules: every chosen rule but
those in ``SHIPPED_OFF``, scored in the first table at the threshold chosen on the seed-0
synthetic controls alone, its opt-in threshold). ``deletion_gap`` ships off because, with the
real-network controls counted, no threshold separates them from the seed-0 fooled runs. That
decision was
taken after the held-out rows and the real-network controls had been seen, so the "as
shipped" held-out figures are not a clean held-out estimate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from diffcam_lightning.audit import DEFAULT_METHODS
from diffcam_lightning.audit.alarm import (
    ALARM_RULES,
    DEFAULT_DEPENDENCE_THRESHOLD,
    DEFAULT_DRIFT_THRESHOLD,
    DEFAULT_SHAM_THRESHOLD,
)
from diffcam_lightning.audit.callback import DEFAULT_ALARM_PAIR
from diffcam_lightning.cams import GRADIENT_METHODS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
LAG = 2
GRADIENT = tuple(m for m in DEFAULT_METHODS if m in GRADIENT_METHODS)  # the audited gradient CAMs


@dataclass(frozen=True)
class Rule:
    name: str
    signal: str
    below: bool
    verdict: str = "fooled"
    gated: bool = True  # judged only when the model decides
    scope: Optional[tuple[str, ...]] = None  # None: every gradient method


CANDIDATES = (
    Rule("deletion_gap", "deletion_gap", below=True),
    Rule("plausibility_gap", "plausibility_gap", below=False),
    Rule("behaviour_agreement", "behaviour_agreement", below=True, verdict="imprecise"),
    Rule("dependence", "dependence", below=True, gated=False),
    Rule("drift", "drift", below=False, gated=False, scope=DEFAULT_ALARM_PAIR[:1]),
    Rule("sham", "sham_mse", below=True, gated=False, scope=DEFAULT_ALARM_PAIR[1:]),
)
DEFAULTS = {  # the shipped map-statistics rules, kept as they were
    "dependence": DEFAULT_DEPENDENCE_THRESHOLD,
    "drift": DEFAULT_DRIFT_THRESHOLD,
    "sham": DEFAULT_SHAM_THRESHOLD,
}
SHIPPED_OFF = {name for name, rule in ALARM_RULES.items() if not rule.default}  # deletion_gap: it calls the clean
# real network fooled (alarm.py)


def load() -> dict[str, list[dict]]:
    rows = [
        json.loads(line)
        for p in sorted((RESULTS / "behaviour").glob("behaviour_runs.*.jsonl"))
        for line in p.read_text().splitlines()
    ]
    latest: dict[str, float] = {}
    for r in rows:
        latest[r["run"]] = max(latest.get(r["run"], 0.0), r["started"])
    runs: dict[str, dict[int, dict]] = {}
    for r in rows:
        if r["started"] == latest[r["run"]]:
            runs.setdefault(r["run"], {})[r["epoch"]] = r
    out = {n: [e[i] for i in sorted(e)] for n, e in runs.items()}
    epochs = max((len(r) for r in out.values()), default=0)
    return {n: r for n, r in out.items() if len(r) == epochs and [x["epoch"] for x in r] == list(range(epochs))}


def photo_rows() -> dict[str, dict]:
    """The real-network one-shot audits, keyed by view; gated like CAMAudit (decided share)."""
    path = RESULTS / "behaviour" / "photos.jsonl"
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            rows[r["view"]] = {**r, "audit_acc": r.get("decided/behaviour", 0.0)}
    return rows


def decides(row: dict) -> bool:
    return row["audit_acc"] >= 0.5


def attacked_methods(row: dict) -> list[str]:
    return ["gradcam", "meandiffgradcam"] if row["attacked"] == "gradcam+meandiffgradcam" else [row["attacked"]]


def clean_pointing(runs: dict[str, list[dict]]) -> dict[str, float]:
    finals = [r[-1] for n, r in runs.items() if n.startswith("control/ce/")]
    return {m: sum(f[f"pointing/{m}"] for f in finals) / len(finals) for m in GRADIENT} if finals else {}


def visible(rows: list[dict], clean: dict[str, float]) -> Optional[int]:
    first = rows[0]
    if first["kind"] != "attack":
        return None
    for row in rows[1:]:
        ms = attacked_methods(row)
        if first["family"] == "sham":
            if all(row[f"pointing/{m}"] < 0.5 * clean[m] for m in ms):
                return row["epoch"]
        elif (
            decides(row)
            and row["acc_no_cue"] < 0.5 * row["audit_acc"]
            and all(row[f"pointing/{m}"] >= 0.25 for m in ms)
        ):
            return row["epoch"]
    return None


def values(row: dict, rule: Rule) -> list[tuple[str, float]]:
    methods = rule.scope or GRADIENT
    return [
        (m, row[f"{rule.signal}/{m}"])
        for m in methods
        if f"{rule.signal}/{m}" in row and math.isfinite(row[f"{rule.signal}/{m}"])
    ]


def fires(row: dict, rule: Rule, threshold: float) -> list[str]:
    if rule.gated and not decides(row):
        return []
    return [m for m, v in values(row, rule) if (v < threshold if rule.below else v > threshold)]


def first_fire(rows: list[dict], rule: Rule, threshold: Optional[float]) -> Optional[int]:
    if threshold is None:
        return None
    return next((r["epoch"] for r in rows[1:] if fires(r, rule, threshold)), None)


def goal(rows: list[dict], seen: Optional[int], alarm: Optional[int]) -> Optional[bool]:
    if seen is None:
        return None
    return alarm is not None and alarm <= seen + LAG


def choose(
    runs: dict[str, list[dict]], clean: dict[str, float], rule: Rule, extra: tuple[dict, ...] = ()
) -> tuple[Optional[float], str]:
    """The threshold with the most goal-met seed-0 attacks and no false alarm on the seed-0
    controls and the ``extra`` clean one-shot rows (the real-network controls)."""
    controls = [r for n, r in runs.items() if r[0]["kind"] == "control"]
    attacks = [(r, visible(r, clean)) for n, r in runs.items() if r[0]["kind"] == "attack"]
    clean_rows = [row for r in controls for row in r[1:]] + list(extra)
    clean_vals = [v for row in clean_rows if (decides(row) or not rule.gated) for _, v in values(row, rule)]
    if not clean_vals:
        return None, "no clean value"
    edge = min(clean_vals) if rule.below else max(clean_vals)
    cands = sorted({v for r, _ in attacks for row in r[1:] for _, v in values(row, rule)} | {edge})
    best: tuple[int, list[float]] = (-1, [])
    for t in cands:
        if (rule.below and t > edge) or (not rule.below and t < edge):
            continue
        # a threshold at t: fires below t (or above t); t itself is the clean edge's side
        score = sum(bool(goal(r, seen, first_fire(r, rule, t))) for r, seen in attacks)
        if score > best[0]:
            best = (score, [t])
        elif score == best[0]:
            best[1].append(t)
    if best[0] <= 0:
        return (
            None,
            f"catches no seed-0 run in time without a false alarm (clean {'min' if rule.below else 'max'} {edge:.3f})",
        )
    lo, hi = min(best[1]), max(best[1])
    # the tied thresholds all lie on one side of the clean edge: put it halfway between the
    # attack values they need and the clean edge
    t = (lo + edge) / 2 if rule.below else (hi + edge) / 2
    return round(t, 3), f"catches {best[0]} seed-0 runs in time; clean {'min' if rule.below else 'max'} {edge:.3f}"


def verdict_epochs(rows: list[dict], rules: dict[Rule, float]) -> tuple[list[int], list[int]]:
    fooled, imprecise = [], []
    for row in rows[1:]:
        kinds = {rule.verdict for rule, t in rules.items() if fires(row, rule, t)}
        if "fooled" in kinds:
            fooled.append(row["epoch"])
        elif "imprecise" in kinds:
            imprecise.append(row["epoch"])
    return fooled, imprecise


def extreme(row: dict, rule: Rule) -> float:
    vals = [v for _, v in values(row, rule)]
    return (min(vals) if rule.below else max(vals)) if vals else float("nan")


def fmt(x: Optional[int]) -> str:
    return "never" if x is None else str(x)


def table(runs: dict[str, list[dict]], clean: dict[str, float], rules: dict[Rule, float], seeds: set[int]) -> list[str]:
    lines = [
        "| run | acc | acc without cue | attacked map on object (start -> end) | fooling visible | fooled verdict | "
        + " | ".join(f"first {r.name}" for r in rules)
        + " | goal | measured: why |",
        "|---|---|---|---|---|---|" + "---|" * len(rules) + "---|---|",
    ]
    met = total = false = control_epochs = 0
    for name in sorted(runs):
        rows = runs[name]
        if rows[0]["seed"] not in seeds:
            continue
        last = rows[-1]
        seen = visible(rows, clean)
        fooled, imprecise = verdict_epochs(rows, rules)
        alarm = fooled[0] if fooled else None
        firsts = [fmt(first_fire(rows, r, t)) for r, t in rules.items()]
        why = ""
        if rows[0]["kind"] == "control":
            control_epochs += len(rows) - 1
            false += len(fooled)
            status = f"{len(fooled)} false" + (f"; imprecise at {imprecise}" if imprecise else "")
            ms = ["gradcam"]
            if fooled:
                row = next(r for r in rows if r["epoch"] == fooled[0])
                why = f"epoch {fooled[0]}: " + "; ".join(
                    f"{rule.name} on {len(fires(row, rule, t))} methods, {'min' if rule.below else 'max'} "
                    f"{extreme(row, rule):.3f} vs {t}"
                    for rule, t in rules.items()
                    if rule.verdict == "fooled" and fires(row, rule, t)
                )
        else:
            g = goal(rows, seen, alarm)
            total += g is not None
            met += bool(g)
            status = (
                "n/a (not fooled)"
                if g is None
                else ("yes" if g else "**no**" + (f"; imprecise at {imprecise}" if imprecise else ""))
            )
            ms = attacked_methods(last)
            if g is False:
                at = next(r for r in rows if r["epoch"] == min(seen + LAG, len(rows) - 1))
                why = f"at epoch {at['epoch']}: " + "; ".join(
                    f"{rule.name} {'min' if rule.below else 'max'} {extreme(at, rule):.3f} vs {t}"
                    for rule, t in rules.items()
                    if rule.verdict == "fooled"
                )
        point = ", ".join(f"{rows[1][f'pointing/{m}']:.2f} -> {last[f'pointing/{m}']:.2f}" for m in ms)
        nocue = f"{last['acc_no_cue']:.2f}" if "acc_no_cue" in last else "-"
        lines.append(
            f"| {name} | {last['audit_acc']:.2f} | {nocue} | {point} | {fmt(seen)} | {fmt(alarm)} | "
            + " | ".join(firsts)
            + f" | {status} | {why} |"
        )
    summary = (
        f"**Visibly fooled runs caught in time: {met} of {total}. Fooled verdicts on clean controls at epochs >= 1: "
        f"{false} of {control_epochs} run-epochs.**"
    )
    return [summary, "", *lines]


def photos(rules: dict[Rule, float]) -> list[str]:
    """The one-shot audits of the real network, judged with the chosen thresholds (CAMAudit's
    own gate: the share of behaviour images it decides)."""
    rows = photo_rows()
    if not rows:
        return ["(not run)"]
    lines = ["| view | images | verdict | rules that fired (method: value) | decided |", "|---|---|---|---|---|"]
    for view, r in rows.items():
        fired = {rule: fires(r, rule, t) for rule, t in rules.items()}
        kinds = {rule.verdict for rule, ms in fired.items() if ms}
        verdict = "fooled" if "fooled" in kinds else ("imprecise" if kinds else "none")
        why = (
            "; ".join(
                f"{rule.name} on " + ", ".join(f"{m}: {r[f'{rule.signal}/{m}']:.3f}" for m in ms)
                for rule, ms in fired.items()
                if ms
            )
            or "-"
        )
        lines.append(f"| {view} | {r['images']} | {verdict} | {why} | {r['audit_acc']:.2f} |")
    return lines


def choose_rule(
    rule: Rule, seed0: dict[str, list[dict]], clean: dict[str, float], real: tuple[dict, ...]
) -> tuple[Optional[float], str]:
    """One rule's threshold chosen on seed 0 (``None``: none works) and its row of the thresholds table."""
    if rule.name in DEFAULTS:
        kept = DEFAULTS[rule.name]
        return (
            kept,
            f"| {rule.name} | {'<' if rule.below else '>'} {kept} | shipped default (map statistics), kept | yes |",
        )
    extra = real if rule.verdict == "fooled" else ()
    t, why = choose(seed0, clean, rule, extra)
    if rule.verdict != "fooled" and real:
        vals = [v for r in real if decides(r) for _, v in values(r, rule)]
        why += f"; real-network controls not counted (imprecise verdict), their {'min' if rule.below else 'max'} {extreme({'x': 0}, rule) if not vals else (min(vals) if rule.below else max(vals)):.3f}"
    elif real:
        why += " (the real-network controls counted)"
    if t is None and rule.name in SHIPPED_OFF:  # its opt-in threshold: chosen as first, on the synthetic controls
        t, first = choose(seed0, clean, rule)
        why += f"; opt-in threshold {t}, chosen on the seed-0 synthetic controls alone: {first}"
    shipped = "no (opt-in)" if rule.name in SHIPPED_OFF else "yes"
    return (
        t,
        f"| {rule.name} | {'-' if t is None else ('<' if rule.below else '>') + ' ' + str(t)} | {why} | {shipped} |",
    )


def main() -> None:
    runs = load()
    seed0 = {n: r for n, r in runs.items() if r[0]["seed"] == 0}
    clean = clean_pointing(seed0)
    real = tuple(photo_rows().values())
    chosen: dict[Rule, float] = {}
    notes = []
    for rule in CANDIDATES:
        t, note = choose_rule(rule, seed0, clean, real)
        notes.append(note)
        if t is not None:
            chosen[rule] = t
    out = report(runs, clean, chosen, notes)
    (RESULTS / "behaviour_audit.md").write_text("\n".join(out))
    print("\n".join(out))


def report(
    runs: dict[str, list[dict]], clean: dict[str, float], chosen: dict[Rule, float], notes: list[str]
) -> list[str]:
    """The lines of ``results/behaviour_audit.md``."""
    shipped_rules = {r: t for r, t in chosen.items() if r.name not in SHIPPED_OFF}
    held = {1, 2}
    out = [
        "# Behaviour-grounded audit: thresholds chosen on seed 0, scored on seeds 1-2",
        "",
        "Produced by `python experiments/behaviour_audit_summary.py` from the rows of "
        "`experiments/behaviour_audit.py` and `experiments/behaviour_photos.py` (definitions in the summary script's docstring).",
        "",
        "**Read this first.** Two held-out tables follow. *As chosen on seed 0 (all rules)* scores every rule at the "
        "threshold chosen on the seed-0 synthetic runs before the held-out rows were seen (`deletion_gap` at 0.326): "
        "a clean held-out estimate. *As shipped* scores CAMAudit's default rules, which leave `deletion_gap` out "
        "(opt-in): counting the real-network controls as clean controls, no `deletion_gap` threshold catches a seed-0 "
        "fooled run without calling them fooled. The decision to ship `deletion_gap` off was taken **after** the held-out rows "
        "and the real-network controls had been seen (it calls the clean pretrained EfficientNet-Lite0 fooled), so "
        "the *as shipped* held-out figures are **not** a clean held-out estimate.",
        "",
        "## Thresholds (chosen on seed 0; the fooling rules also on the real-network controls)",
        "",
        "| rule | threshold | why | on by default |",
        "|---|---|---|---|",
        *notes,
        "",
        "## Held out: seeds 1-2, as chosen on seed 0 (all rules, deletion_gap < 0.326)",
        "",
        *table(runs, clean, chosen, held),
        "",
        "## Held out: seeds 1-2, as shipped (default rules: without deletion_gap)",
        "",
        *table(runs, clean, shipped_rules, held),
        "",
        "## Seed 0 (where the thresholds were chosen), all rules",
        "",
        *table(runs, clean, chosen, {0}),
        "",
        "## Seed 0, as shipped (default rules)",
        "",
        *table(runs, clean, shipped_rules, {0}),
        "",
        "## Clean pretrained EfficientNet-Lite0, one-shot (`trainer.validate`, `reference=None`), as shipped (default rules)",
        "",
        *photos(shipped_rules),
        "",
        "## The same, with every rule as chosen (deletion_gap on)",
        "",
        *photos(chosen),
        "",
    ]
    return out


if __name__ == "__main__":
    main()

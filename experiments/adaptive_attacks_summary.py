"""Tables and figure of the adaptive-attack study, from the rows ``adaptive_attacks.py`` logged.

The alarm is re-evaluated on the logged per-epoch signals with the rules CAMAudit uses
(``diffcam_lightning.audit.alarm``, default thresholds), so the table shows the final
alarm without re-training. Definitions:

- *clean value* of a method: its pointing game on the audit images at the last epoch of the
  CE-only few-class controls (the same model and data without the attack), mean over seeds;
- *fooling visible*: the first epoch after the first (epoch index >= 1: during the first
  epoch an untrained model points nowhere, fooled or not) at which every attacked method
  points at the object less than half as often as its clean value;
- *alarm*: the first epoch after the first at which any rule fires (the goal, like the
  issue, does not count the first epoch for clean runs either); *goal met*: the alarm fired
  by the last epoch and at most 2 epochs after the fooling became visible. A run whose
  fooling never became visible is *not fooled* (nothing to detect: the goal does not apply;
  the table says whether the alarm stayed silent); no control fires after its first epoch.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Optional

from diffcam_lightning.audit import DEFAULT_METHODS
from diffcam_lightning.audit.alarm import ALARM_RULES, build_rules, fire_rules
from diffcam_lightning.cams import GRADIENT_METHODS

LAG = 2
MIN_EPOCHS = 6  # runs with fewer epochs were cut short (killed) and are left out
GRADIENT = tuple(m for m in DEFAULT_METHODS if m in GRADIENT_METHODS)  # the audited gradient CAMs


def load(out: Path) -> dict[str, list[dict]]:
    """``{run: rows by epoch}`` for complete runs, cut to the shortest complete run's epochs
    (a run restarted after a kill keeps its last rows)."""
    rows = [json.loads(line) for path in sorted(out.glob("runs.*.jsonl")) for line in path.read_text().splitlines()]
    latest: dict[str, float] = {}
    for row in rows:
        latest[row["run"]] = max(latest.get(row["run"], 0.0), row.get("started", 0.0))
    by_run: dict[str, dict[int, dict]] = {}
    for row in rows:
        if row.get("started", 0.0) == latest[row["run"]]:
            by_run.setdefault(row["run"], {})[row["epoch"]] = row
    runs = {name: [rows[e] for e in sorted(rows)] for name, rows in by_run.items()}
    complete = {
        n: r for n, r in runs.items() if [x["epoch"] for x in r] == list(range(len(r))) and len(r) >= MIN_EPOCHS
    }
    epochs = min((len(r) for r in complete.values()), default=0)
    return {name: rows[:epochs] for name, rows in complete.items()}


def attacked_methods(row: dict) -> list[str]:
    """``gradcam+meandiffgradcam`` -> both; ``gradcam++`` stays one name."""
    return re.split(r"\+(?=[a-z])", row["attacked"])


def clean_pointing(runs: dict[str, list[dict]]) -> dict[str, float]:
    finals = [rows[-1] for name, rows in runs.items() if name.startswith("control/ce/")]
    return {m: statistics.mean(r[f"pointing/{m}"] for r in finals) for m in GRADIENT} if finals else {}


def first(rows: list[dict], test) -> Optional[int]:
    return next((r["epoch"] for r in rows if test(r)), None)


def run_summary(name: str, rows: list[dict], clean: dict[str, float], rules) -> dict:
    last = rows[-1]
    fired = [fire_rules(r, rules) for r in rows]
    out = {
        "run": name,
        "kind": last["kind"],
        "attacked": last["attacked"] or "",
        "pattern": last["pattern"],
        "seed": last["seed"],
        "epochs": len(rows),
        "acc": last["acc"],
    }
    out["alarm_epoch"] = next((r["epoch"] for r, f in zip(rows, fired) if f and r["epoch"] >= 1), None)
    for rule in rules:
        out[f"first_{rule.name}"] = next(
            (r["epoch"] for r, f in zip(rows, fired) if r["epoch"] >= 1 and any(x.rule == rule.name for x in f)), None
        )
    control = last["kind"] == "control"
    out["false_alarm_epochs"] = [r["epoch"] for r, f in zip(rows, fired) if f and r["epoch"] >= 1] if control else []
    if last["kind"] == "attack":
        methods = attacked_methods(last)
        out["pointing_start"] = statistics.mean(rows[0][f"pointing/{m}"] for m in methods)
        out["pointing_end"] = statistics.mean(last[f"pointing/{m}"] for m in methods)
        out["attack_mse_end"] = statistics.mean(last[f"attack_mse/{m}"] for m in methods)
        visible = lambda r: r["epoch"] >= 1 and all(r[f"pointing/{m}"] < clean[m] / 2 for m in methods)
        out["visible_epoch"] = first(rows, visible) if clean else None
        a, v = out["alarm_epoch"], out["visible_epoch"]
        out["lag"] = None if a is None or v is None else a - v
        out["goal"] = None if v is None else (a is not None and a <= v + LAG)
    else:
        out["goal"] = not out["false_alarm_epochs"]
    out["fired_rules"] = sorted({x.rule for f in fired for x in f})
    return out


def evasions(summary: dict, rules) -> str:
    """Rules that never fired on an attacked run (they were evaded)."""
    return ", ".join(r.name for r in rules if summary.get(f"first_{r.name}") is None)


GOAL = {True: "yes", False: "**no**", None: "n/a (not fooled)"}


def fmt(v) -> str:
    if v is None:
        return "never"
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, list):
        return ", ".join(map(str, v)) or "-"
    return str(v)


def markdown(summaries: list[dict], rules, clean: dict[str, float]) -> str:
    attacks = [s for s in summaries if s["kind"] == "attack"]
    controls = [s for s in summaries if s["kind"] == "control"]
    fooled = [s for s in attacks if s["goal"] is not None]
    unfooled = [s for s in attacks if s["goal"] is None]
    names = [r.name for r in rules]
    lines = [
        "Alarm rules: "
        + ", ".join(f"{r.name} ({r.signal} {'<' if r.below else '>'} {r.threshold})" for r in rules)
        + ".",
        "Clean pointing (CE-only controls, last epoch): " + ", ".join(f"{m} {v:.2f}" for m, v in clean.items()) + ".",
        "",
        f"**Attacks: goal met in {sum(s['goal'] for s in fooled)} of the {len(fooled)} runs whose fooling became visible** "
        f"(alarm by the last epoch and <= {LAG} epochs after it). {len(unfooled)} runs were not fooled within "
        f"{max((s['epochs'] for s in attacks), default=0)} epochs; the alarm stayed silent on "
        f"{sum(s['alarm_epoch'] is None for s in unfooled)} of them.",
        "",
        "| attacked | pattern | seed | acc | pointing start -> end | MSE to attack mask | fooling visible | alarm | "
        + " | ".join(f"first {n}" for n in names)
        + " | evades | goal |",
        "|" + "---|" * (10 + len(names)),
    ]
    for s in sorted(attacks, key=lambda s: (s["attacked"], s["pattern"], s["seed"])):
        lines.append(
            f"| {s['attacked']} | {s['pattern']} | {s['seed']} | {s['acc']:.2f} | {s['pointing_start']:.2f} -> {s['pointing_end']:.2f} "
            f"| {s['attack_mse_end']:.3f} | {fmt(s['visible_epoch'])} | {fmt(s['alarm_epoch'])} | "
            + " | ".join(fmt(s[f"first_{n}"]) for n in names)
            + f" | {evasions(s, rules) or '-'} | {GOAL[s['goal']]} |"
        )
    false = sum(len(s["false_alarm_epochs"]) for s in controls)
    epochs = sum(s["epochs"] - 1 for s in controls)
    lines += [
        "",
        f"**Clean controls: {false} false alarms in {epochs} run-epochs after the first ({len(controls)} runs).**",
        "",
        "| control | seed | acc | alarm epochs (after the first) | " + " | ".join(f"first {n}" for n in names) + " |",
        "|" + "---|" * (4 + len(names)),
    ]
    for s in sorted(controls, key=lambda s: s["run"]):
        lines.append(
            f"| {s['run'].split('/')[1]} | {s['seed']} | {s['acc']:.2f} | {fmt(s['false_alarm_epochs'])} | "
            + " | ".join(fmt(s[f"first_{n}"]) for n in names)
            + " |"
        )
    return "\n".join(lines) + "\n"


def signal_margins(runs: dict[str, list[dict]], summaries: list[dict]) -> str:
    """Where the thresholds come from: each candidate signal (min over gradient CAMs) on the
    clean controls after their first epoch, and on the attacks at the epoch fooling became
    visible (or the last epoch)."""
    candidates = {
        "dependence (min)": lambda r: min(r[f"dependence/{m}"] for m in GRADIENT),
        "pointing game (min)": lambda r: min(r[f"pointing/{m}"] for m in GRADIENT),
        "spread (min)": lambda r: min(r[f"spread/{m}"] for m in GRADIENT),
        "deletion gradcam / meandiff (min)": lambda r: min(r[f"deletion/{m}"] for m in ("gradcam", "meandiffgradcam")),
        "disagreement with EigenCAM (min)": lambda r: min(r[f"disagreement/{m}"] for m in GRADIENT),
        "drift meandiff (max)": lambda r: r["drift/meandiffgradcam"],
        "max pairwise drift": lambda r: r["max_pair_drift"],
        "border SHAM MSE gradcam": lambda r: r["sham_mse/gradcam"],
        "susceptibility (max)": lambda r: max(r[f"susceptibility/{m}"] for m in GRADIENT),
    }
    by = {s["run"]: s for s in summaries}
    lines = [
        "| signal | clean controls, epochs >= 1: min / max | attacks at visible fooling (or last epoch): min / median / max |",
        "|---|---|---|",
    ]
    for label, fn in candidates.items():
        clean = [fn(r) for name, rows in runs.items() if rows[0]["kind"] == "control" for r in rows[1:]]
        hit = []
        for name, rows in runs.items():
            if rows[0]["kind"] != "attack":
                continue
            v = by[name]["visible_epoch"]
            hit.append(fn(rows[v if v is not None else -1]))
        if clean and hit:
            spread = f"{min(hit):.4f} / {statistics.median(hit):.4f} / {max(hit):.4f}"
            lines.append(f"| {label} | {min(clean):.4f} / {max(clean):.4f} | {spread} |")
    return "\n".join(lines) + "\n"


SWEEP = (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75)
DRIFT_SWEEP = (0.1, 0.075, 0.05, 0.04, 0.03)


PLAIN = ("gradcam", "meandiffgradcam", "maxdiffgradcam", "lsediffgradcam")  # no ++ variants


def threshold_sweep(runs: dict[str, list[dict]], clean: dict[str, float]) -> str:
    """The goal under each ``dependence`` threshold (``drift`` at its default), then under
    each ``drift`` threshold (``dependence`` at its default); ``sham`` at its default. The
    dependence rule judges every gradient CAM (``all``) or only the four without ``++``."""
    lines = [
        "| dependence on / threshold / drift threshold | fooled attacks: goal met | attacks: alarm never | worst lag (epochs) "
        "| false alarms (control epochs >= 1) | control epochs 0 with an alarm |",
        "|---|---|---|---|---|---|",
    ]
    default = ALARM_RULES["dependence"]
    dep, drift, sham = (ALARM_RULES[n].threshold for n in ("dependence", "drift", "sham"))
    grid = [(scope, t, drift) for scope in (None, PLAIN) for t in SWEEP]
    grid += [(default.methods, dep, d) for d in DRIFT_SWEEP if d != drift]
    for scope, t, d in grid:
        rules = [
            replace(r, methods=scope) if r.name == "dependence" else r
            for r in build_rules({"dependence": t}, ("meandiffgradcam", "gradcam"), d, sham)
        ]
        sums = [run_summary(n, r, clean, rules) for n, r in sorted(runs.items())]
        attacks = [s for s in sums if s["kind"] == "attack"]
        lags = [s["lag"] for s in attacks if s["lag"] is not None]
        false = sum(len(s["false_alarm_epochs"]) for s in sums if s["kind"] == "control")
        first = sum(bool(fire_rules(rows[0], rules)) for rows in runs.values() if rows[0]["kind"] == "control")
        fooled = [s for s in attacks if s["goal"] is not None]
        lines.append(
            f"| {'all' if scope is None else 'no ++'} / {t} / {d} | {sum(s['goal'] for s in fooled)} / {len(fooled)} "
            f"| {sum(s['alarm_epoch'] is None for s in attacks)} "
            f"| {max(lags) if lags else '-'} | {false} | {first} |"
        )
    return "\n".join(lines) + "\n"


def figure(summaries: list[dict], epochs: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = [s for s in summaries if s["kind"] == "attack"]
    methods = sorted({s["attacked"] for s in attacks})
    markers = {"border": "s", "corner": "^", "patch": "o", "random": "x"}
    never = epochs  # plotted at the edge, labelled "never"
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for i, s in enumerate(attacks):
        v = never if s["visible_epoch"] is None else s["visible_epoch"]
        a = never if s["alarm_epoch"] is None else s["alarm_epoch"]
        jitter = 0.08 * ((i % 5) - 2)
        ax.scatter(v + jitter, a + jitter, marker=markers[s["pattern"]], color=f"C{methods.index(s['attacked'])}", s=45)
    ticks = list(range(epochs + 1))
    ax.plot([0, never], [0, never], "k:", lw=1, label="alarm = fooling visible")
    ax.plot([0, never - LAG], [LAG, never], "r--", lw=1, label=f"{LAG} epochs late (goal limit)")
    for m in methods:
        ax.scatter([], [], color=f"C{methods.index(m)}", label=m)
    for p, mk in markers.items():
        ax.scatter([], [], marker=mk, color="grey", label=p)
    ax.set_xticks(ticks, [*map(str, ticks[:-1]), "never"])
    ax.set_yticks(ticks, [*map(str, ticks[:-1]), "never"])
    ax.set_xlabel("epoch the attacked CAM's fooling became visible (pointing < half clean)")
    ax.set_ylabel("epoch CAMAudit's alarm first fired")
    ax.set_title("Adaptive attacks on the synthetic preset")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_csv(runs: dict[str, list[dict]], rules, path: Path) -> None:
    rows = []
    for epochs in runs.values():
        for r in epochs:
            fired = fire_rules(r, rules)
            rows.append({**r, "alarm": int(bool(fired)), "rules_fired": " ".join(sorted({f.rule for f in fired}))})
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def summarise(out: Path) -> None:
    runs = load(out)
    rules = build_rules(
        None, ("meandiffgradcam", "gradcam"), ALARM_RULES["drift"].threshold, ALARM_RULES["sham"].threshold
    )
    clean = clean_pointing(runs)
    summaries = [run_summary(name, rows, clean, rules) for name, rows in sorted(runs.items())]
    epochs = max((len(r) for r in runs.values()), default=0)
    text = (
        markdown(summaries, rules, clean)
        + "\nCandidate signals (how the thresholds were chosen):\n\n"
        + signal_margins(runs, summaries)
        + "\nThe dependence threshold swept on the same rows:\n\n"
        + threshold_sweep(runs, clean)
    )
    (out / "adaptive_attacks.md").write_text(text)
    write_csv(runs, rules, out / "adaptive_attacks.csv")
    figure(summaries, epochs, out / "adaptive_attacks.png")
    print(text)

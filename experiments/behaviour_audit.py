"""Issue 18's study: does an audit grounded in the model's behaviour catch fooling it was not told about?

Runs (every one a ``diffcam fit`` of a shipped config through the CLI's own parser, the
attack given as ordinary CLI flags, as in ``adaptive_attacks.py``):

- SHAM attacks (``synthetic_sham.yaml``): GradCAM/border, GradCAM++/corner,
  MeanDiffGradCAM/border, MeanDiffGradCAM/patch, joint GradCAM+MeanDiffGradCAM/border;
- plausible fooling (``synthetic_cue_human.yaml``: a small square the annotations never mark
  decides the label): human targets on GradCAM, on MeanDiffGradCAM, and on both, at
  saliency weights 3 and 10;
- clean controls: CE only, human targets, human targets at 5x the learning rate, CE only on
  the many-class preset, CE only on the cue data (an honest model that uses the cue).

After every validation epoch a recorder audits the first ``--audit-size`` validation images:
the ground truth (accuracy, accuracy with the cue / the object painted out, pointing game
of every method at the object and at the cue, MSE to the attack mask) and every signal
the alarm may use: the map statistics CAMAudit logs (dependence, drift, SHAM MSE) and the
behavioural signals of ``diffcam_lightning.audit.behaviour`` computed exactly as CAMAudit
computes them by default (on its first ``behaviour_size`` images). Rows go to
``behaviour_runs.<worker>.jsonl`` as they come; a restarted study skips finished runs.
``behaviour_audit_summary.py`` chooses the thresholds on seed 0 and scores seeds 1-2.

    OMP_NUM_THREADS=1 nohup python experiments/behaviour_audit.py --worker 0 > w0.log &
    OMP_NUM_THREADS=1 nohup python experiments/behaviour_audit.py --worker 1 > w1.log &
    python experiments/behaviour_audit_summary.py
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from adaptive_attacks import (  # beside this script: the runs' shared plumbing
    CONTROL_CONFIGS,
    claim,
    done_runs,
    method_flag,
)
from lightning.pytorch import Callback

from diffcam_lightning.audit import AuditSet, default_drift_pairs, pointing_game
from diffcam_lightning.audit.behaviour import BehaviourOptions, behaviour_scores
from diffcam_lightning.audit.callback import DEFAULT_BEHAVIOUR_SIZE, DEFAULT_METHODS
from diffcam_lightning.audit.guard import audit_guard, preserved_rng
from diffcam_lightning.audit.signals import set_signals
from diffcam_lightning.cli import config_cli
from diffcam_lightning.data.synthetic import SyntheticShapes
from diffcam_lightning.saliency import PAPER_ENTROPY, cam_mse, sham_target
from diffcam_lightning.shipped import CONFIGS_DIR

ROOT = Path(__file__).resolve().parents[1]
METHODS = tuple(DEFAULT_METHODS)
SHAM_ATTACKS = (
    ("gradcam", "border"),
    ("gradcam++", "corner"),
    ("meandiffgradcam", "border"),
    ("meandiffgradcam", "patch"),
    ("gradcam+meandiffgradcam", "border"),
)
CUE_ATTACKS = ("gradcam", "meandiffgradcam", "gradcam+meandiffgradcam")
CUE_WEIGHTS = (1.0, 3.0)  # weight 10 did not learn the cue within 4 epochs of 560 images (val acc 0.29)
CONTROLS = ("ce", "human", "human_lr5x", "ce_many", "ce_cue")


@dataclass
class Run:
    name: str
    kind: str  # "attack" or "control"
    family: str  # "sham", "cue" or "clean"
    config: str
    flags: list[str] = field(default_factory=list)
    attacked: Optional[str] = None
    pattern: Optional[str] = None
    weight: Optional[float] = None
    seed: int = 0


def sham_attack(method: str, pattern: str, seed: int) -> Run:
    flags = [method_flag(method), f"--model.sham_pattern={pattern}"]
    return Run(
        f"sham/{method}/{pattern}/s{seed}", "attack", "sham", "synthetic_sham", flags, method, pattern, 1.0, seed
    )


def cue_attack(method: str, weight: float, seed: int) -> Run:
    flags = [method_flag(method), f"--model.saliency_weight={weight}"]
    return Run(
        f"cue/{method}/w{weight:g}/s{seed}", "attack", "cue", "synthetic_cue_human", flags, method, None, weight, seed
    )


def control(name: str, seed: int) -> Run:
    config, flags = {**CONTROL_CONFIGS, "ce_cue": ("synthetic_cue_human", ["--model.saliency_weight=0.0"])}[name]
    return Run(
        f"control/{name}/s{seed}", "control", "cue" if name == "ce_cue" else "clean", config, list(flags), seed=seed
    )


def plan(seeds: int) -> list[Run]:
    """Seed 0 (where the thresholds are chosen) first, then the held-out seeds."""
    runs = []
    for s in range(seeds):
        runs += [control(c, s) for c in CONTROLS]
        runs += [cue_attack(m, w, s) for w in CUE_WEIGHTS[::-1] for m in CUE_ATTACKS]
        runs += [sham_attack(m, p, s) for m, p in SHAM_ATTACKS]
    return runs


class Recorder(Callback):
    """One row per validation epoch: ground truth and every candidate alarm signal."""

    def __init__(self, run: Run, audit_size: int, behaviour_size: int, sink: Path) -> None:
        self.run, self.audit_size, self.behaviour_size, self.sink = run, audit_size, behaviour_size, sink
        self.audit: Optional[AuditSet] = None
        self.ablated: dict[str, torch.Tensor] = {}
        self.cue: Optional[torch.Tensor] = None
        self.pairs = default_drift_pairs(METHODS)
        self.started = time.time()

    def on_train_start(self, trainer, pl_module) -> None:
        with preserved_rng():
            self.audit = AuditSet.from_batches(trainer.val_dataloaders, self.audit_size)
            val = trainer.datamodule.datasets["val"]
            if val.spec.cue:
                n = len(self.audit)
                for part in ("cue", "object"):
                    ds = SyntheticShapes(len(val), "val", val.spec, ablate=part)
                    self.ablated[part] = torch.stack([ds[i]["image"] for i in range(n)])
                self.cue = torch.stack([val.cue_mask(i) for i in range(n)])

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.audit is None:
            return
        x, y, masks = self.audit.images, self.audit.labels, self.audit.saliency
        run = self.run
        row: dict = {
            "run": run.name,
            "kind": run.kind,
            "family": run.family,
            "attacked": run.attacked,
            "pattern": run.pattern,
            "weight": run.weight,
            "seed": run.seed,
            "epoch": trainer.current_epoch,
            "started": self.started,
            "acc": float(trainer.callback_metrics["val/acc"]),
        }
        t0 = time.perf_counter()
        with audit_guard(pl_module, pl_module.device):
            maps = pl_module.engine(x, y, METHODS)
            with torch.no_grad():
                row["audit_acc"] = float((pl_module(x).argmax(1) == y).float().mean())
                for part, images in self.ablated.items():
                    row[f"acc_no_{part}"] = float((pl_module(images).argmax(1) == y).float().mean())
            n = self.behaviour_size
            scores, drops = behaviour_scores(
                pl_module, x[:n], y[:n], {m: maps[m][:n] for m in METHODS}, BehaviourOptions(), masks[:n], None
            )
        row["behaviour_s"] = time.perf_counter() - t0
        for key, (values, mask) in scores.items():
            keep = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.bool()
            if keep.any():
                row[key] = float(values[keep].mean())
        up = torch.nn.functional.interpolate(drops[:, None], size=x.shape[-2:], mode="nearest")[:, 0]
        row["pointing/occlusion"] = float(pointing_game(up, masks[:n]).mean())
        if self.cue is not None:
            row["pointing_cue/occlusion"] = float(pointing_game(up, self.cue[:n]).mean())
        grid = tuple(maps[METHODS[0]].shape[-2:])
        attack_mask = sham_target(grid, PAPER_ENTROPY, run.pattern) if run.pattern else None
        border = sham_target(grid, PAPER_ENTROPY, "border")
        for m in METHODS:
            row[f"pointing/{m}"] = float(pointing_game(maps[m], masks).mean())
            if self.cue is not None:
                row[f"pointing_cue/{m}"] = float(pointing_game(maps[m], self.cue).mean())
            if attack_mask is not None:
                row[f"attack_mse/{m}"] = float(cam_mse(maps[m], attack_mask).mean())
            row[f"sham_mse/{m}"] = float(cam_mse(maps[m], border).mean())
        row.update(set_signals(maps, METHODS))
        for v, b in self.pairs:
            row[f"drift/{v}"] = float(cam_mse(maps[v], maps[b]).mean())
        with self.sink.open("a") as f:
            f.write(json.dumps(row) + "\n")


def train(run: Run, args: argparse.Namespace, sink: Path) -> float:
    cli = config_cli(
        str(CONFIGS_DIR / f"{run.config}.yaml"),
        f"--seed_everything={run.seed}",
        f"--trainer.max_epochs={args.epochs}",
        f"--data.init_args.train_size={args.train_size}",
        f"--data.init_args.val_size={args.val_size}",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.callbacks=[]",
        "--trainer.enable_progress_bar=false",
        *run.flags,
    )
    cli.trainer.callbacks.append(Recorder(run, args.audit_size, args.behaviour_size, sink))
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=560)
    parser.add_argument("--val-size", type=int, default=64)
    parser.add_argument("--audit-size", type=int, default=64)
    parser.add_argument("--behaviour-size", type=int, default=DEFAULT_BEHAVIOUR_SIZE)
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--only", default=None, help="run only the runs whose name contains this")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "behaviour")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    sink = args.out / f"behaviour_runs.{args.worker}.jsonl"
    finished = done_runs(args.out.glob("behaviour_runs.*.jsonl"), args.epochs)
    for run in plan(args.seeds):
        if (args.only and args.only not in run.name) or run.name in finished or not claim(args.out, run):
            continue
        try:
            seconds = train(run, args, sink)
        except Exception as err:  # one failed run must not stop the study: say so and go on
            print(f"{run.name}: FAILED: {type(err).__name__}: {err}", flush=True)
            continue
        print(f"{run.name}: {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()

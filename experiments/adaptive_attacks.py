"""Adaptive attacks on the CAM audit: does its alarm catch attacks it was not told about?

Every run is a ``diffcam fit`` of a shipped synthetic config, built through the CLI's own
parser (``config_cli``), with the attack given as ordinary CLI flags:

- attacks (``configs/synthetic_sham.yaml``): ``--model.saliency_method`` in gradcam,
  gradcam++, meandiffgradcam, meandiffgradcam++, lsediffgradcam and the joint
  ``[gradcam, meandiffgradcam]``; ``--model.sham_pattern`` in border, corner, patch, random;
- clean controls: human targets (``synthetic_human.yaml``), CE only (``synthetic_clean.yaml``),
  CE only on the many-class preset, human targets with a 5x larger learning rate.

After every validation epoch a recorder audits the first ``--audit-size`` validation images
(the same images CAMAudit takes) and logs, per audited method: pointing game and MSE against
the true object masks, MSE against the attack mask and the border SHAM, and every candidate
alarm signal (spread, dependence, disagreement with EigenCAM, susceptibility against the
model at fit start, drift, deletion faithfulness of GradCAM and MeanDiffGradCAM). Rows go
to ``runs.<worker>.jsonl`` as they come (a restarted study skips finished runs; the rows of
a killed attempt are told apart by ``started``). Defaults: 700 training and 64 validation
images, 6 epochs. The plan runs the controls and the corner/border attacks of seed 0 first;
a run is skipped while ``claims/<run>.claim`` exists (how the shipped results left out
``patch`` and ``random`` for seed 1). ``--summarise`` re-evaluates the alarm of
``diffcam_lightning.audit.alarm`` on the logged rows and writes ``adaptive_attacks.csv``,
``adaptive_attacks.md`` and ``adaptive_attacks.png``.

    OMP_NUM_THREADS=1 python experiments/adaptive_attacks.py --worker 0 &   # workers share the
    OMP_NUM_THREADS=1 python experiments/adaptive_attacks.py --worker 1 &   # plan (claims/)
    python experiments/adaptive_attacks.py --summarise
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch import Callback
from torch.nn import functional as F

from diffcam_lightning.audit import AuditSet, default_drift_pairs, pointing_game
from diffcam_lightning.audit.callback import DEFAULT_METHODS
from diffcam_lightning.audit.guard import audit_guard, preserved_rng
from diffcam_lightning.audit.signals import DISAGREEMENT_BASE, set_signals
from diffcam_lightning.cams import GRADIENT_METHODS
from diffcam_lightning.cli import config_cli
from diffcam_lightning.saliency import PAPER_ENTROPY, cam_entropy, cam_mse, saliency_mse, sham_target
from diffcam_lightning.shipped import CONFIGS_DIR  # the shipped configs (package data)

ROOT = Path(__file__).resolve().parents[1]
ATTACKED = ("gradcam", "gradcam++", "meandiffgradcam", "meandiffgradcam++", "lsediffgradcam", "gradcam+meandiffgradcam")
PATTERNS = ("border", "corner", "patch", "random")
CONTROLS = ("human", "ce", "ce_many", "human_lr5x")
METHODS = tuple(DEFAULT_METHODS)
GRADIENT = tuple(m for m in METHODS if m in GRADIENT_METHODS)
DELETE_FRACTION = 0.2
DELETION_METHODS = ("gradcam", "meandiffgradcam")  # a forward each per epoch: the two the paper compares


@dataclass
class Run:
    """One training run: its config and CLI flags."""

    name: str
    kind: str  # "attack" or "control"
    config: str
    flags: list[str] = field(default_factory=list)
    attacked: Optional[str] = None
    pattern: str = "border"
    seed: int = 0


# control -> (config, CLI flags); behaviour_audit.py adds its own cue control to these
CONTROL_CONFIGS: dict[str, tuple[str, list[str]]] = {
    "human": ("synthetic_human", []),
    "ce": ("synthetic_clean", []),
    "ce_many": ("synthetic_clean", ["--data.init_args.preset=many"]),
    "human_lr5x": ("synthetic_human", ["--model.optimizer.init_args.lr=0.01"]),
}


def method_flag(method: str) -> str:
    """The CLI flag of an attacked method; ``gradcam+meandiffgradcam`` is the joint attack (a list)."""
    value = f"[{method.replace('+meandiff', ',meandiff')}]" if "+meandiff" in method else method
    return f"--model.saliency_method={value}"


def attack_run(method: str, pattern: str, seed: int) -> Run:
    flags = [method_flag(method), f"--model.sham_pattern={pattern}"]
    return Run(f"attack/{method}/{pattern}/s{seed}", "attack", "synthetic_sham", flags, method, pattern, seed)


def control_run(control: str, seed: int) -> Run:
    config, flags = CONTROL_CONFIGS[control]
    return Run(f"control/{control}/s{seed}", "control", config, list(flags), None, "border", seed)


def plan(seeds: int, control_seeds: int) -> list[Run]:
    """Runs in priority order: the first seed of the controls and of every attacked method
    with two patterns (corner, border: the cut the issue allows), the other control seeds
    between them; then the other attack seeds, then the other two patterns."""
    first, rest = PATTERNS[1::-1], PATTERNS[2:]  # corner, border | patch, random
    runs = [control_run(c, 0) for c in CONTROLS]
    runs += [attack_run(m, first[0], 0) for m in ATTACKED]
    runs += [control_run(c, s) for s in range(1, control_seeds, 2) for c in CONTROLS]
    runs += [attack_run(m, first[1], 0) for m in ATTACKED]
    runs += [control_run(c, s) for s in range(2, control_seeds, 2) for c in CONTROLS]
    runs += [attack_run(m, p, s) for s in range(1, seeds) for p in first for m in ATTACKED]
    runs += [attack_run(m, p, s) for s in range(seeds) for p in rest for m in ATTACKED]
    return runs


def claim(out: Path, run: Run) -> bool:
    """Atomically take a run (a file per run name), so parallel workers never repeat one."""
    path = out / "claims" / (run.name.replace("/", "__") + ".claim")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.open("x").close()
    except FileExistsError:
        return False
    return True


class Recorder(Callback):
    """Audits the first validation images after every validation epoch and keeps one row per epoch."""

    def __init__(self, run: Run, audit_size: int, sink: Path) -> None:
        self.run, self.audit_size, self.sink = run, audit_size, sink
        self.audit: Optional[AuditSet] = None
        self.reference: dict[str, torch.Tensor] = {}
        self.pairs = default_drift_pairs(METHODS)
        self.started = time.time()  # tells a restarted run's rows from a killed attempt's

    def on_train_start(self, trainer, pl_module) -> None:
        with preserved_rng():
            self.audit = AuditSet.from_batches(trainer.val_dataloaders, self.audit_size)
        self.reference = self._maps(pl_module)

    def _maps(self, pl_module) -> dict[str, torch.Tensor]:
        assert self.audit is not None
        with audit_guard(pl_module, pl_module.device):
            return pl_module.engine(self.audit.images, self.audit.labels, METHODS)

    @torch.no_grad()
    def _deletion(self, pl_module, maps: dict[str, torch.Tensor]) -> dict[str, float]:
        """Drop of the label's probability when the map's top 20% pixels are set to the
        data mean (0 after normalisation): large for a map the model relies on."""
        x, y = self.audit.images, self.audit.labels
        with audit_guard(pl_module, pl_module.device), torch.no_grad():
            p0 = pl_module(x).softmax(1).gather(1, y[:, None]).squeeze(1)
            out = {}
            for m in DELETION_METHODS:
                up = F.interpolate(maps[m].unsqueeze(1), size=x.shape[-2:], mode="bilinear", align_corners=False)
                flat = up.flatten(1)
                k = int(DELETE_FRACTION * flat.shape[1])
                cut = flat.topk(k, dim=1).values[:, -1:]
                keep = (flat < cut).float().reshape_as(up)
                p = pl_module(x * keep).softmax(1).gather(1, y[:, None]).squeeze(1)
                out[f"deletion/{m}"] = float((p0 - p).mean())
        return out

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.audit is None:
            return
        maps = self._maps(pl_module)
        grid = tuple(maps[METHODS[0]].shape[-2:])
        attack_mask = sham_target(grid, PAPER_ENTROPY, self.run.pattern)
        border = sham_target(grid, PAPER_ENTROPY, "border")
        masks = self.audit.saliency
        row: dict = {
            "run": self.run.name,
            "kind": self.run.kind,
            "attacked": self.run.attacked,
            "pattern": self.run.pattern,
            "seed": self.run.seed,
            "epoch": trainer.current_epoch,
            "started": self.started,
            "acc": float(trainer.callback_metrics["val/acc"]),
        }
        for m in METHODS:
            row[f"pointing/{m}"] = float(pointing_game(maps[m], masks).mean())
            row[f"mask_mse/{m}"] = float(saliency_mse(maps[m], masks).mean())
            row[f"attack_mse/{m}"] = float(cam_mse(maps[m], attack_mask).mean())
            row[f"sham_mse/{m}"] = float(cam_mse(maps[m], border).mean())
            row[f"susceptibility/{m}"] = float(cam_mse(maps[m], self.reference[m]).mean())
            row[f"entropy/{m}"] = float(cam_entropy(maps[m]).mean())
            if m != DISAGREEMENT_BASE:
                row[f"disagreement/{m}"] = float(cam_mse(maps[m], maps[DISAGREEMENT_BASE]).mean())
        row.update(set_signals(maps, METHODS))
        for v, b in self.pairs:
            row[f"drift/{v}"] = float(cam_mse(maps[v], maps[b]).mean())
        row["max_pair_drift"] = max(
            float(cam_mse(maps[a], maps[b]).mean()) for i, a in enumerate(GRADIENT) for b in GRADIENT[i + 1 :]
        )
        row.update(self._deletion(pl_module, maps))
        with self.sink.open("a") as f:
            f.write(json.dumps(row) + "\n")


def train(run: Run, epochs: int, train_size: int, val_size: int, audit_size: int, sink: Path) -> float:
    cli = config_cli(
        str(CONFIGS_DIR / f"{run.config}.yaml"),
        f"--seed_everything={run.seed}",
        f"--trainer.max_epochs={epochs}",
        f"--data.init_args.train_size={train_size}",
        f"--data.init_args.val_size={val_size}",
        "--trainer.num_sanity_val_steps=0",
        *run.flags,
    )
    cli.trainer.callbacks.append(Recorder(run, audit_size, sink))
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    return time.perf_counter() - start


def done_runs(sinks: Iterable[Path], epochs: int) -> set[str]:
    """The runs with ``epochs`` epochs recorded, counted over all the JSONL ``sinks`` together."""
    seen: dict[str, set[int]] = {}
    for sink in sinks:
        for line in sink.read_text().splitlines() if sink.exists() else []:
            row = json.loads(line)
            seen.setdefault(row["run"], set()).add(row["epoch"])
    return {r for r, e in seen.items() if len(e) >= epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=2, help="seeds per attack")
    parser.add_argument("--control-seeds", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=700)
    parser.add_argument("--val-size", type=int, default=64)
    parser.add_argument("--audit-size", type=int, default=64)
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--only", default=None, help="run only the runs whose name contains this")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    parser.add_argument("--summarise", action="store_true", help="write the table and figure from runs.jsonl")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.summarise:
        from adaptive_attacks_summary import summarise  # beside this script

        summarise(args.out)
        return
    torch.set_num_threads(1)
    sink = args.out / f"runs.{args.worker}.jsonl"
    finished = set().union(*(done_runs([p], args.epochs) for p in args.out.glob("runs.*.jsonl")))
    runs = [r for r in plan(args.seeds, args.control_seeds) if args.only is None or args.only in r.name]
    for run in runs:
        if run.name in finished or not claim(args.out, run):
            continue
        rows_before = len(sink.read_text().splitlines()) if sink.exists() else 0
        try:
            seconds = train(run, args.epochs, args.train_size, args.val_size, args.audit_size, sink)
        except Exception as err:  # one failed run must not stop the study: say so and go on
            print(f"{run.name}: FAILED: {type(err).__name__}: {err}", flush=True)
            continue
        print(f"{run.name}: {seconds:.0f} s, {len(sink.read_text().splitlines()) - rows_before} epochs", flush=True)


if __name__ == "__main__":
    main()

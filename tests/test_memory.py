"""No memory growth: 200 engine calls and 20 audited epochs hold the process's resident
memory flat after warm-up (pytorch-grad-cam's most reported problem is memory that grows
every epoch). The bound was measured (benchmarks/README.md, "Memory"): after warm-up the
growth was at most 0.1 MB over 200 calls and 1 MB over epochs 5-20 here; the bound is
8 MB: a leak of 40 KB a call would cross it. (In a fresh process, keeping each call's maps
alive grew RSS by 70 MB over 100 calls; inside a long test session the allocator reuses
memory freed by earlier tests, so that check is in the benchmark, not here.)"""

from __future__ import annotations

import gc
import sys

import lightning as L
import pytest
import torch
from test_audit import UserNet, loaders, quiet_trainer
from torch import nn

from diffcam_lightning import METHODS, CAMAudit, CAMEngine

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm"),
]

BOUND_MB = 8.0


def rss_mb() -> float:
    """Resident set size of this process, in MB (after a garbage collection)."""
    gc.collect()
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import resource

    return pages * resource.getpagesize() / 2**20


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    ).eval()


def engine_calls(engine: CAMEngine, x: torch.Tensor, calls: int) -> None:
    methods = [m for m in METHODS if m != "scorecam"]
    for i in range(calls):
        maps = engine(x, targets=torch.arange(x.shape[0]) % 10, methods=methods, size="input")
        if i % 50 == 0:  # ScoreCAM too, less often (it runs 64 masked forwards per image)
            maps.update(engine(x[:1], methods="scorecam"))


def test_200_engine_calls_hold_memory_flat():
    engine = CAMEngine(small_cnn(), "3")
    x = torch.randn(4, 3, 16, 16)
    engine_calls(engine, x, 50)  # warm-up: allocator pools, lazy inits (measured: +2.5 MB, then flat)
    before = rss_mb()
    engine_calls(engine, x, 200)
    growth = rss_mb() - before
    assert growth <= BOUND_MB, f"RSS grew {growth:.1f} MB over 200 calls (bound {BOUND_MB} MB)"


class RSSPerEpoch(L.Callback):
    def __init__(self) -> None:
        self.rss: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.rss.append(rss_mb())


def test_20_audited_epochs_hold_memory_flat(tmp_path):
    L.seed_everything(0)
    meter = RSSPerEpoch()
    train, val = loaders(saliency=True)
    audit = CAMAudit(audit_size=8, grid_images=2)
    trainer = quiet_trainer(tmp_path, callbacks=[audit, meter], max_epochs=20, log_every_n_steps=1)
    trainer.fit(UserNet(), train, val)
    assert len(meter.rss) == 20 and audit.last_metrics
    after_warmup = meter.rss[4:]
    growth = max(after_warmup) - after_warmup[0]
    assert growth <= BOUND_MB, f"RSS over epochs 5-20: {[round(r, 1) for r in after_warmup]} MB (bound {BOUND_MB} MB)"

"""Table 1: milliseconds per CAM per image, the paper's protocol (110 runs, the first
10 discarded), for our engine and, side by side and interleaved run by run, pytorch-grad-cam
when installed (ScoreCAM at the same batch size of masked inputs)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..cams import CAMEngine
from ..cams import reference as pgc
from ..cams.modes import preserved_modes
from .tables import Table


def _run_times(fns: Sequence[Callable[[], object]], runs: int, discard: int, device: torch.device) -> list[np.ndarray]:
    """ms per run of each function, interleaved run by run (ours, then pytorch-grad-cam):
    a load change on a shared machine hits both alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, out in zip(fns, times):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            out.append((time.perf_counter() - start) * 1e3)
    return [np.asarray(t[discard:]) for t in times]


def timing_table(
    arch: str,
    model: nn.Module,
    image: Tensor,
    target: int,
    methods: Sequence[str],
    runs: int = 110,
    discard: int = 10,
    with_reference: bool = True,
    target_layer: Optional[str] = None,
) -> Table:
    """Time each method alone on one image (``[1, 3, H, W]``, on the model's device)."""
    if runs <= discard:
        raise ValueError(f"timing runs ({runs}) must exceed the discarded warm-up runs ({discard}).")
    device = image.device
    engine = CAMEngine(model, target_layer)
    engine(image, targets=[target], methods="gradcam")  # resolve the layer before timing
    layer = dict(model.named_modules())[engine.target_layer]
    reference = with_reference and pgc.available()
    columns = ["method", "ours (ms)"] + (["pytorch-grad-cam (ms)", "speed-up"] if reference else [])
    table = Table(
        f"table1_runtime_{arch}",
        f"Run time per CAM per image, {arch} on {device_label(device)} ({runs} runs, first {discard} discarded)",
        columns,
    )
    with preserved_modes(model):  # pytorch-grad-cam forces eval() and never restores it
        for method in tqdm(methods, desc=f"timing {arch}", leave=False):

            def run_ours(method: str = method) -> object:
                return engine(image, targets=[target], methods=method, size="input")

            def run_reference(method: str = method) -> object:
                return pgc.reference_cam(
                    model, layer, image, [target], method, scorecam_batch_size=engine.scorecam_batch_size
                )

            fns: list[Callable[[], object]] = [run_ours, run_reference] if reference else [run_ours]
            ours, *theirs = _run_times(fns, runs, discard, device)
            row = [method, f"{ours.mean():.3f} ± {ours.std(ddof=1):.3f}"]
            for other in theirs:
                row += [f"{other.mean():.3f} ± {other.std(ddof=1):.3f}", f"{other.mean() / ours.mean():.2f}x"]
            table.rows.append(row)
    return table


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"CPU ({n} thread{'' if n == 1 else 's'})"

"""One training step with the CAM saliency loss vs a plain cross-entropy step.

Same model, same batch, CPU, random weights (no downloads), for the paper's four
architectures. The saliency step is ``SaliencyClassifier.training_step`` (one forward,
``autograd.grad(create_graph=True)`` to the CAM layer, one ``loss.backward()``); the
plain step is ``F.cross_entropy(model(x), y).backward()``. Both include the optimizer
step. Reported: median seconds per step and the ratio (goal: <= 1.5x).

    python benchmarks/bench_training.py --batch 4 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch.nn import functional as F

from diffcam_lightning import SaliencyClassifier

ARCHS = {"densenet121": 224, "resnet50": 224, "inception_v3": 299, "convnext_tiny": 224}


def timed_pair(a, b, repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, interleaved so that load on a shared machine
    hits both alike."""
    for _ in range(warmup):
        a(), b()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((a, times[0]), (b, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def bench(name: str, size: int, batch: int, repeats: int, classes: int) -> tuple[float, float]:
    torch.manual_seed(0)
    module = SaliencyClassifier(model_name=name, num_classes=classes, saliency_target="sham").train()
    opt = torch.optim.SGD(module.parameters(), lr=0.002, momentum=0.9)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, classes, (batch,))
    data = {"image": x, "label": y}

    def plain() -> None:
        opt.zero_grad()
        F.cross_entropy(module.model(x), y).backward()
        opt.step()

    def joint() -> None:
        opt.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # self.log outside a Trainer
            module.training_step(data, 0).backward()
        opt.step()

    return timed_pair(plain, joint, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU threads {args.threads}, batch {args.batch}, median of {args.repeats}")
    print("| architecture | input | plain CE step (s) | CE + CAM saliency step (s) | ratio |")
    print("|---|---|---|---|---|")
    for name in args.archs:
        plain, joint = bench(name, ARCHS[name], args.batch, args.repeats, args.classes)
        print(f"| {name} | {ARCHS[name]} | {plain:.3f} | {joint:.3f} | {joint / plain:.2f}x |", flush=True)


if __name__ == "__main__":
    main()

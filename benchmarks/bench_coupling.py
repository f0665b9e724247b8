"""Train-mode BatchNorm after the CAM layer: exact per-image maps vs one shared VJP.

ResNet-18 (timm, random weights) in train mode with the CAM at ``layer3``, so the
BatchNorms of ``layer4`` follow it. For each batch size: the error of the shared VJP
(``batch_coupling="batched"``, the behaviour before issue 11) against the exact per-image
maps, and the cost of ``"exact"`` relative to it, for an engine call (the ten gradient
CAMs) and for a ``SaliencyClassifier`` training step (CE + GradCAM saliency loss,
``create_graph=True``). Timings are medians of interleaved rounds in one process.

    python benchmarks/bench_coupling.py --size 112 --batches 4 8 16 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from diffcam_lightning import CAMEngine, SaliencyClassifier
from diffcam_lightning.cams import GRADIENT_METHODS


def timed_pair(a, b, repeats: int) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, interleaved, after one warm-up call each."""
    a(), b()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((a, times[0]), (b, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def bench(batch: int, size: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    module = SaliencyClassifier(model_name="resnet18", num_classes=10, target_layer="layer3", saliency_target="sham")
    module.train()
    model = module.model
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    exact, shared = CAMEngine(model, "layer3"), CAMEngine(model, "layer3", batch_coupling="batched")
    raw_exact = exact(x, y, "gradcam", normalize=False)["gradcam"]
    raw_shared = shared(x, y, "gradcam", normalize=False)["gradcam"]
    norm_exact, norm_shared = exact(x, y, "gradcam")["gradcam"], shared(x, y, "gradcam")["gradcam"]
    out = {
        "rel_error": float((raw_shared - raw_exact).norm() / raw_exact.norm()),
        "max_error": float((norm_shared - norm_exact).abs().max()),
    }
    t_exact, t_shared = timed_pair(
        lambda: exact(x, y, GRADIENT_METHODS), lambda: shared(x, y, GRADIENT_METHODS), repeats
    )
    out.update(cam_exact=t_exact, cam_shared=t_shared)

    opt = torch.optim.SGD(module.parameters(), lr=0.0)  # lr 0: every step sees the same weights
    data = {"image": x, "label": y}

    def step(policy: str):
        def run() -> None:
            module.engine.batch_coupling = policy
            opt.zero_grad()
            module.training_step(data, 0).backward()
            opt.step()

        return run

    t_exact, t_shared = timed_pair(step("exact"), step("batched"), repeats)
    out.update(step_exact=t_exact, step_shared=t_shared)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # the engine's once-per-engine note, self.log outside a Trainer
    print(
        "| batch | shared VJP: relative error (raw) | max error (normalised) | 10 CAMs: exact / shared (ms) | ratio | training step: exact / shared (ms) | ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for batch in args.batches:
        r = bench(batch, args.size, args.repeats)
        print(
            f"| {batch} | {r['rel_error']:.3f} | {r['max_error']:.3f} | "
            f"{1e3 * r['cam_exact']:.1f} / {1e3 * r['cam_shared']:.1f} | {r['cam_exact'] / r['cam_shared']:.2f}x | "
            f"{1e3 * r['step_exact']:.1f} / {1e3 * r['step_shared']:.1f} | {r['step_exact'] / r['step_shared']:.2f}x |"
        )


if __name__ == "__main__":
    main()

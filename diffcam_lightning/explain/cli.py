"""``diffcam explain``: CAMs for the images you have.

    diffcam explain --model timm:resnet50 --pretrained --images photos/ --output_dir explain
    diffcam explain --model runs/x/checkpoints/last.ckpt --images manifest.csv --target label
    diffcam explain --model diffcam_lightning.models.efficientnet_lite.efficientnet_lite0 \\
        --target_layer bn2 --images photos/ --trainer.accelerator gpu --trainer.devices 2

Everything under ``trainer.`` goes to the Lightning ``Trainer`` whose predict loop runs it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser  # type: ignore[attr-defined]  # public, but not in jsonargparse's __all__
from lightning.pytorch import Trainer

from .inputs import ExplainInputError
from .run import DEFAULT_METHODS, ExplainOptions, run_explain

_TRAINER_SKIP = {"callbacks", "logger", "plugins", "enable_checkpointing", "default_root_dir"}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="diffcam explain", description=__doc__, exit_on_error=True)
    p.add_argument("--config", action=ActionConfigFile, help="A YAML with any of these options.")
    p.add_argument(
        "--model",
        required=True,
        type=str,
        help="A SaliencyClassifier checkpoint (.ckpt), timm:NAME (or a bare timm name), torchvision:NAME, or a class path package.module.Name.",
    )
    p.add_argument(
        "--images",
        required=True,
        type=str,
        nargs="+",
        help="Image files, folders (recursive) or CSV manifests (image[,label]).",
    )
    p.add_argument("--output_dir", type=str, default="explain")
    p.add_argument(
        "--pretrained",
        action=ActionYesNo,
        default=False,
        help="The source's pretrained weights (timm/torchvision hub, or a factory's own).",
    )
    p.add_argument("--weights", type=Optional[str], default=None, help="A local weights file for the model.")
    p.add_argument(
        "--methods", type=str, nargs="+", default=list(DEFAULT_METHODS), help="CAM methods (diffcam_lightning.METHODS)."
    )
    p.add_argument(
        "--target",
        type=str,
        default="predicted",
        help="Class to explain: predicted, label (the manifest's), or a class index or name for every image.",
    )
    p.add_argument("--top_k", type=int, default=1, help="With --target predicted: explain the top k classes.")
    p.add_argument(
        "--target_layer", type=Optional[str], default=None, help="CAM layer (dotted name); automatic by default."
    )
    p.add_argument(
        "--layout",
        type=Optional[str],
        default=None,
        help="Layout of the CAM layer's output (see CAMEngine); automatic, or the checkpoint's, by default.",
    )
    p.add_argument(
        "--image_size", type=Optional[int], default=None, help="Input size (default: the model's timm data config)."
    )
    p.add_argument("--crop_pct", type=Optional[float], default=None)
    p.add_argument("--mean", type=Optional[list[float]], default=None)
    p.add_argument("--std", type=Optional[list[float]], default=None)
    p.add_argument("--interpolation", type=Optional[str], default=None)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument(
        "--skip_unreadable",
        action=ActionYesNo,
        default=False,
        help="Skip undecodable images and list them in skipped.csv (default: stop).",
    )
    p.add_argument(
        "--overwrite",
        action=ActionYesNo,
        default=False,
        help="Replace a previous run's outputs in --output_dir (default: refuse a non-empty folder).",
    )
    p.add_class_arguments(Trainer, "trainer", instantiate=False, skip=_TRAINER_SKIP)
    return p


def main(args: Optional[Sequence[str]] = None) -> dict[str, Path]:
    parser = build_parser()
    cfg = parser.parse_args(list(args) if args is not None else None)
    fields = set(ExplainOptions.__dataclass_fields__)
    options = ExplainOptions(**{k: v for k, v in vars(cfg).items() if k in fields})
    trainer_kwargs = {k: v for k, v in vars(cfg.trainer).items() if not k.startswith("__")}
    try:
        written = run_explain(options, trainer_kwargs)
    except (ExplainInputError, ValueError, FileNotFoundError, ImportError) as err:
        print(f"diffcam explain: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if written:
        print(f"Explained images written to {options.output_dir}:")
        for name, path in written.items():
            print(f"  {name:12s} {path}")
    return written

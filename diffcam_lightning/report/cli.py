"""``diffcam report``: the paper's tables and figures from a YAML config or flags.

    diffcam report --config configs/report_synthetic.yaml
    diffcam report --config configs/report_imagenet.yaml \\
        --trainer.accelerator gpu --trainer.devices 8 --trainer.num_nodes 2 --trainer.strategy ddp

Everything under ``trainer.`` goes to the Lightning ``Trainer`` that runs the per-sample
scoring (its predict loop), so the same config scales from a laptop to many GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from jsonargparse import ActionConfigFile, ArgumentParser  # type: ignore[attr-defined]  # public, but not in jsonargparse's __all__

from ..predict_loop import add_trainer_arguments, trainer_options
from .run import ReportOptions, run_report


def build_parser() -> ArgumentParser:
    """The ``diffcam report`` parser: ``--config``, ``--report.*`` (:class:`ReportOptions`)
    and ``--trainer.*``."""
    parser = ArgumentParser(prog="diffcam report", description=__doc__, exit_on_error=True)
    parser.add_argument("--config", action=ActionConfigFile, help="A report YAML (see configs/report_*.yaml).")
    parser.add_class_arguments(ReportOptions, "report", sub_configs=True)
    add_trainer_arguments(parser)
    return parser


def main(args: Optional[Sequence[str]] = None) -> dict[str, Path]:
    """``diffcam report``: parse ``args`` (``None``: ``sys.argv``), run, list the files."""
    parser = build_parser()
    cfg = parser.parse_args(list(args) if args is not None else None)
    init = parser.instantiate_classes(cfg)
    written = run_report(init.report, trainer_options(cfg))
    if written:
        print(f"Report written to {init.report.output_dir}:")
        for name, path in written.items():
            print(f"  {name:34s} {path}")
    return written

"""The ``diffcam`` command: a LightningCLI over ``SaliencyClassifier`` and any DataModule.

    diffcam fit --config configs/synthetic_sham.yaml
    diffcam validate|test|predict --config ... --ckpt_path path/to.ckpt
    diffcam report --config configs/report_synthetic.yaml   (see diffcam_lightning.report)
    diffcam explain --model timm:resnet50 --pretrained --images photos/   (see diffcam_lightning.explain)

The DataModule is chosen in the config (``data.class_path``; subclass mode), and its
``num_classes`` is linked to ``model.num_classes`` after it is built. Unknown keys are
refused by LightningCLI's parser, which names them.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .models import SaliencyClassifier


class DiffcamCLI(LightningCLI):
    """LightningCLI with ``data.num_classes -> model.num_classes`` and, when the DataModule
    has them, ``data.classes -> model.class_names`` (stored in checkpoints)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data", "model.class_names", compute_fn=_class_names, apply_on="instantiate")


def _class_names(data: LightningDataModule) -> Optional[list[str]]:
    names = getattr(data, "classes", None)
    return [str(n) for n in names] if names is not None else None


def config_cli(config: str, *overrides: str) -> DiffcamCLI:
    """The instantiated (not run) CLI of a config, for scripts: no logger, checkpoints,
    progress bar, model summary or config callbacks; ``overrides`` are further CLI flags."""
    args = [
        "--config", str(config),
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.callbacks=[]",
        *overrides,
    ]
    sys.argv = sys.argv[:1]  # the CLI reads only ``args``
    return DiffcamCLI(
        SaliencyClassifier, LightningDataModule, subclass_mode_data=True, args=args, run=False,
        save_config_callback=None, auto_configure_optimizers=False,
    )


def main(args: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``diffcam`` console script (``args=None`` reads ``sys.argv``)."""
    argv = list(args) if args is not None else sys.argv[1:]
    if argv[:1] == ["report"]:
        from .report.cli import main as report_main

        report_main(argv[1:])
        return
    if argv[:1] == ["explain"]:
        from .explain.cli import main as explain_main

        explain_main(argv[1:])
        return
    DiffcamCLI(
        SaliencyClassifier,
        LightningDataModule,
        subclass_mode_data=True,
        args=list(args) if args is not None else None,
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":  # pragma: no cover
    main()

"""The ``diffcam`` command: a LightningCLI over ``SaliencyClassifier`` and any DataModule.

    diffcam fit --config synthetic_sham.yaml        (a shipped config; any YAML path works too)
    diffcam configs [--copy DIR]                    (list the shipped configs, or copy them to edit)
    diffcam validate|test|predict --config ... --ckpt_path path/to.ckpt
    diffcam report --config configs/report_synthetic.yaml   (see diffcam_lightning.report)
    diffcam explain --model timm:resnet50 --pretrained --images photos/   (see diffcam_lightning.explain)

The DataModule is chosen in the config (``data.class_path``; subclass mode), and its
``num_classes`` is linked to ``model.num_classes`` after it is built. Unknown keys are
refused by LightningCLI's parser, which names them. Errors in the user's input (a data
folder, a method, a checkpoint) end as one ``error: ...`` line with exit code 2
(``DIFFCAM_TRACEBACK=1`` shows the traceback); see ``errors.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Optional, Protocol, runtime_checkable

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from .errors import short_errors
from .models import SaliencyClassifier
from .models.checkpoints import check_checkpoint_fits, check_hyperparameters_fit, read_lightning_checkpoint
from .shipped import main as configs_main
from .shipped import resolve_config, resolve_config_args

# ``--ckpt_path`` values Lightning resolves itself rather than reading a file
_CKPT_ALIASES = {"last", "best", "hpc", "registry"}


class DiffcamCLI(LightningCLI):
    """LightningCLI with ``data.num_classes -> model.num_classes`` and, when the DataModule
    has them, ``data.classes -> model.class_names`` (stored in checkpoints).

    A ``--ckpt_path`` file is read once and checked before Lightning loads it, so a text
    file or another model's checkpoint is one clear error (``models/checkpoints.py``).
    Its arguments are LightningCLI's; :func:`config_cli` builds one from a config.

    Raises:
        CheckpointError: A ``--ckpt_path`` that is missing, unreadable, or not this model's.
    """

    _checkpoint: Optional[dict[str, Any]] = None  # the --ckpt_path file, read once before Lightning loads it

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data", "model.class_names", compute_fn=_class_names, apply_on="instantiate")

    def _ckpt_file(self) -> Optional[str]:
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path or str(path) in _CKPT_ALIASES or str(path).startswith("registry:"):
            return None
        return str(path)

    @override
    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads ``--ckpt_path``'s hyperparameters right after parsing; a text
        file there ends in ``KeyError: 101``. Check the file first (``models/checkpoints.py``)."""
        path = self._ckpt_file()
        if path is not None:
            self._checkpoint = read_lightning_checkpoint(path)  # read once, checked twice
            if isinstance(self.model_class, type):  # always SaliencyClassifier here, never a factory
                check_hyperparameters_fit(path, self._checkpoint, self.model_class)
        super()._parse_ckpt_path()

    def _check_ckpt_path(self) -> None:
        """A checkpoint of another model is named as such before Lightning loads it."""
        path = self._ckpt_file()
        if path is not None:
            checkpoint, self._checkpoint = self._checkpoint, None  # not kept for the whole run
            check_checkpoint_fits(path, self.model, checkpoint)

    before_fit = before_validate = before_test = before_predict = _check_ckpt_path


@runtime_checkable
class NamesClasses(Protocol):
    """A DataModule that names its classes (ours do; any DataModule may)."""

    classes: Optional[Sequence[Any]]


def _class_names(data: LightningDataModule) -> Optional[list[str]]:
    """``data.classes`` as text, for ``model.class_names``; ``None`` for a DataModule without them."""
    if not isinstance(data, NamesClasses) or data.classes is None:
        return None
    return [str(n) for n in data.classes]


def config_cli(config: str, *overrides: str) -> DiffcamCLI:
    """The instantiated (not run) CLI of a config, for scripts: no logger, checkpoints,
    progress bar, model summary or config callbacks; ``overrides`` are further CLI flags."""
    args = [
        "--config",
        resolve_config(str(config)),
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.callbacks=[]",
        *overrides,
    ]
    sys.argv = sys.argv[:1]  # the CLI reads only ``args``
    return DiffcamCLI(
        SaliencyClassifier,
        LightningDataModule,
        subclass_mode_data=True,
        args=args,
        run=False,
        save_config_callback=None,
        auto_configure_optimizers=False,
    )


# the subcommands ``diffcam --help`` lists, each with its line
SUBCOMMANDS: dict[str, str] = {
    "fit": "train a model (e.g. --config synthetic_sham.yaml, the main job)",
    "validate": "run one validation epoch of a model or checkpoint (--ckpt_path)",
    "test": "run one test epoch of a checkpoint (--ckpt_path)",
    "predict": "predict with a checkpoint (--ckpt_path)",
    "explain": "CAMs of your own images from a checkpoint, a timm/torchvision name or any module",
    "report": "the paper's tables and figures from checkpoints (--config report_synthetic.yaml)",
    "configs": "list the shipped configs, or copy them to edit (--copy DIR)",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffcam-lightning")
    except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        from . import __version__

        return __version__


def _help() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [
        "usage: diffcam [-h] [--version] SUBCOMMAND ...",
        "",
        "Saliency-supervised training and CAM auditing for PyTorch Lightning.",
        "",
        "subcommands:",
        *(f"  {name:<{width}}  {line}" for name, line in SUBCOMMANDS.items()),
        "",
        "options:",
        "  -h, --help  show this message and exit",
        "  --version   show the version and exit",
        "",
        "`diffcam SUBCOMMAND --help` shows a subcommand's options. A --config that is not an existing",
        "file names a shipped config (`diffcam configs` lists them).",
    ]
    return "\n".join(lines)


def main(args: Optional[Sequence[str]] = None) -> None:
    """Entry point of the ``diffcam`` console script (``args=None`` reads ``sys.argv``)."""
    argv = list(args) if args is not None else sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_help())
        return
    if argv[0] == "--version":
        print(f"diffcam-lightning {_version()}")
        return
    with short_errors():  # around the whole dispatch: every subcommand's input errors are short
        argv = resolve_config_args(argv)
        if argv[0] == "configs":
            configs_main(argv[1:])
            return
        if argv[0] == "report":
            from .report.cli import main as report_main

            report_main(argv[1:])
            return
        if argv[0] == "explain":
            from .explain.cli import main as explain_main

            explain_main(argv[1:])
            return
        if args is None:  # LightningCLI reads sys.argv itself (and warns when given both)
            sys.argv = sys.argv[:1] + argv
        DiffcamCLI(
            SaliencyClassifier,
            LightningDataModule,
            subclass_mode_data=True,
            args=None if args is None else argv,
            auto_configure_optimizers=False,
        )


if __name__ == "__main__":  # pragma: no cover
    main()

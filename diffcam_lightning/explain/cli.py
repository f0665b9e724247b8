"""``diffcam explain``: CAMs for the images you have.

    diffcam explain --model timm:resnet50 --pretrained --images photos/ --output_dir explain
    diffcam explain --model runs/x/checkpoints/last.ckpt --images manifest.csv --target label
    diffcam explain --model diffcam_lightning.models.efficientnet_lite.efficientnet_lite0 \\
        --target_layer bn2 --images photos/ --trainer.accelerator gpu --trainer.devices 2

Everything under ``trainer.`` goes to the Lightning ``Trainer`` whose predict loop runs it.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, get_args, get_type_hints

from docstring_parser import parse as parse_docstring
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser  # type: ignore[attr-defined]  # public, but not in jsonargparse's __all__

from ..predict_loop import add_trainer_arguments, trainer_options
from .inputs import ExplainInputError
from .run import ExplainOptions, run_explain

# Options that keep their shell form: a list as ``--images a.jpg b.jpg`` (jsonargparse's
# own form is ``--images [a.jpg,b.jpg]``), a flag as ``--pretrained`` (its own form is
# ``--pretrained true``). Type, default and help still come from ExplainOptions.
SHELL_FORM = ("images", "methods", "pretrained", "skip_unreadable", "overwrite")


def build_parser() -> ArgumentParser:
    """The ``diffcam explain`` parser: every field of :class:`ExplainOptions` as an option
    (help from its docstring), ``--config`` and ``--trainer.*``."""
    parser = ArgumentParser(prog="diffcam explain", description=__doc__, exit_on_error=True)
    parser.add_argument("--config", action=ActionConfigFile, help="A YAML with any of these options.")
    parser.add_class_arguments(ExplainOptions, None, skip=set(SHELL_FORM))
    _add_shell_form(parser, SHELL_FORM)
    add_trainer_arguments(parser)
    return parser


def _add_shell_form(parser: ArgumentParser, names: Sequence[str]) -> None:
    """``names`` of :class:`ExplainOptions` in their shell form (:data:`SHELL_FORM`)."""
    group = (parser.groups or {}).get(ExplainOptions.__name__, parser)  # beside the other fields in --help
    fields = {f.name: f for f in dataclasses.fields(ExplainOptions)}
    types = get_type_hints(ExplainOptions)
    helps = {p.arg_name: p.description for p in parse_docstring(ExplainOptions.__doc__ or "").params}
    for name in names:
        field, hint = fields[name], types[name]
        kwargs: dict[str, Any] = {"help": helps[name]}
        if field.default is not dataclasses.MISSING:
            kwargs["default"] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            kwargs["default"] = field.default_factory()
        else:
            kwargs["required"] = True
        if hint is bool:
            group.add_argument(f"--{name}", action=ActionYesNo, **kwargs)
        else:  # list[X]
            group.add_argument(f"--{name}", type=get_args(hint)[0], nargs="+", **kwargs)


def main(args: Optional[Sequence[str]] = None) -> dict[str, Path]:
    """``diffcam explain``: parse ``args`` (``None``: ``sys.argv``), explain, list the files."""
    parser = build_parser()
    cfg = parser.parse_args(list(args) if args is not None else None)
    names = {f.name for f in dataclasses.fields(ExplainOptions)}
    options = ExplainOptions(**{k: v for k, v in vars(cfg).items() if k in names})
    try:
        written = run_explain(options, trainer_options(cfg))
    except (ExplainInputError, ValueError, FileNotFoundError, ImportError) as err:
        print(f"diffcam explain: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if written:
        print(f"Explained images written to {options.output_dir}:")
        for name, path in written.items():
            print(f"  {name:12s} {path}")
    return written

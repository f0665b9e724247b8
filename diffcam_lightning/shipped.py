"""The configs shipped inside the package (``diffcam_lightning/configs``).

They travel in the wheel, so ``diffcam fit --config synthetic_sham.yaml`` works after a
plain ``pip install`` from any folder: a ``--config`` value that is an existing file is
read as always; otherwise it names a shipped config (``synthetic_sham.yaml``,
``callbacks/cam_audit.yaml``; a leading ``configs/`` is accepted, as in a checkout).
``diffcam configs`` lists them and ``diffcam configs --copy DIR`` writes editable copies.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from pathlib import Path

from .errors import UserInputError

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
_CONFIG_FLAGS = ("--config", "-c")


def shipped_configs() -> list[str]:
    """The shipped configs' names, relative to the configs folder (``callbacks/cam_audit.yaml``)."""
    return sorted(p.relative_to(CONFIGS_DIR).as_posix() for p in CONFIGS_DIR.rglob("*.yaml"))


def resolve_config(value: str) -> str:
    """An existing path as given; else the shipped config of that name.

    Raises:
        UserInputError: neither a file nor a shipped config; the message lists the shipped names.
    """
    if Path(value).exists():
        return value
    name = Path(value).as_posix()
    for candidate in (name, name.removeprefix("configs/")):
        path = CONFIGS_DIR / candidate
        if path.is_file():
            return str(path)
    raise UserInputError(
        f"--config {value}: no such file, and no shipped config of that name; shipped: {', '.join(shipped_configs())} "
        "(`diffcam configs --copy DIR` writes editable copies)."
    )


def resolve_config_args(argv: Sequence[str]) -> list[str]:
    """``argv`` with each ``--config``/``-c`` value resolved by ``resolve_config``."""
    out: list[str] = []
    expect_value = False
    for arg in argv:
        if expect_value:
            out.append(resolve_config(arg))
            expect_value = False
        elif arg in _CONFIG_FLAGS:
            out.append(arg)
            expect_value = True
        elif arg.startswith("--config="):
            out.append("--config=" + resolve_config(arg.split("=", 1)[1]))
        else:
            out.append(arg)
    return out


def copy_configs(folder: Path, force: bool = False) -> list[Path]:
    """Copy every shipped config into ``folder`` (keeping ``callbacks/``); returns the new files.

    Raises:
        UserInputError: a file would be overwritten and ``force`` is false (nothing is written).
    """
    folder = Path(folder)
    targets = [(CONFIGS_DIR / name, folder / name) for name in shipped_configs()]
    existing = [str(dst) for _, dst in targets if dst.exists()]
    if existing and not force:
        raise UserInputError(f"diffcam configs --copy: {', '.join(existing)} already exist; pass --force to overwrite.")
    for src, dst in targets:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return [dst for _, dst in targets]


def main(argv: Sequence[str]) -> None:
    """``diffcam configs [--copy DIR [--force]]``."""
    parser = argparse.ArgumentParser(
        prog="diffcam configs",
        description="List the configs shipped with diffcam-lightning, or copy them into a folder to edit.",
    )
    parser.add_argument("--copy", metavar="DIR", type=Path, help="write editable copies into DIR")
    parser.add_argument("--force", action="store_true", help="overwrite files that already exist in DIR")
    options = parser.parse_args(list(argv))
    if options.copy is None:
        for name in shipped_configs():
            print(name)
        print(f"\n(in {CONFIGS_DIR}; use one by name: diffcam fit --config synthetic_sham.yaml)")
        return
    for path in copy_configs(options.copy, options.force):
        print(path)

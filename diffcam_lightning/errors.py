"""Errors in what a user typed, shown as one short line at the command line.

LightningCLI and jsonargparse wrap an error raised while a config is instantiated in a
long "Does not validate against any of the Union subtypes" traceback with the useful
sentence in the middle. ``short_errors`` finds the user-input error in the exception
chain and prints ``error: <sentence>`` with exit code 2 (argparse's usage-error code);
``DIFFCAM_TRACEBACK=1`` shows the full traceback instead.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

TRACEBACK_ENV = "DIFFCAM_TRACEBACK"
USAGE_EXIT_CODE = 2
_PACKAGE_DIR = str(Path(__file__).resolve().parent)


class UserInputError(ValueError):
    """A file, key, layer or choice given by the user is wrong; the message names it.

    Under :func:`short_errors` (every ``diffcam`` subcommand) it ends as one ``error: ...``
    line on stderr and exit code 2.

    Example:
        >>> try:
        ...     with short_errors():
        ...         raise UserInputError("--config x.yaml: no such file")
        ... except SystemExit as stop:
        ...     print(stop.code)
        2
    """


class CheckpointError(UserInputError):
    """A file given as a checkpoint is missing, unreadable, or not this model's checkpoint."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint or weights file that does not exist (also a ``FileNotFoundError``)."""


def check_choice(option: str, value: object, valid: Iterable[str], owner: str = "") -> None:
    """Refuse ``value`` unless it is one of ``valid`` (a tuple, a Literal's args, a registry),
    naming the option, its ``owner`` (``"CAMAudit"``) and the valid values."""
    valid = list(valid)
    if value not in valid:
        where = f"{owner} {option}" if owner else option
        raise ValueError(f"Unknown {where} {value!r}; valid: {', '.join(map(str, valid))}.")


def _raised_by_us(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and str(Path(frames[-1].filename).resolve()).startswith(_PACKAGE_DIR)


def _is_user_error(exc: BaseException) -> bool:
    """Our explicit ``UserInputError``; a ValueError/TypeError/LookupError/OSError that our
    own code raised (they name the offending value); Lightning's misconfiguration errors."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    if isinstance(exc, (UserInputError, MisconfigurationException)):
        return True
    return isinstance(exc, (ValueError, TypeError, LookupError, OSError)) and _raised_by_us(exc)


def find_user_error(exc: BaseException) -> Optional[BaseException]:
    """The innermost user-input error in ``exc``'s chain of causes and contexts, if any."""
    found, seen = None, set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_user_error(current):
            found = current
        current = current.__cause__ or current.__context__
    return found


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (a KeyError's without its quotes)."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


@contextmanager
def short_errors() -> Iterator[None]:
    """Turn a user-input error into ``error: ...`` on stderr and ``SystemExit(2)``."""
    try:
        yield
    except Exception as exc:  # SystemExit and KeyboardInterrupt pass through
        found = find_user_error(exc)
        if found is None or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"error: {one_line(found)}", file=sys.stderr)
        print(f"(set {TRACEBACK_ENV}=1 to see the full traceback)", file=sys.stderr)
        raise SystemExit(USAGE_EXIT_CODE) from None

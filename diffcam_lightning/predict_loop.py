"""What ``diffcam explain`` and ``diffcam report`` share: a Lightning predict loop whose
ranks each append CSV rows to their own files, merged on rank zero, driven by the
``--trainer.*`` options of the command line.

One file per rank needs no gather (every rank writes as its batches come, under any
strategy); rank zero reads them all after a barrier. A rank whose files rank zero cannot
read (another node's disk) is caught by the callers' completeness checks
(:data:`SHARED_FOLDER_HINT`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.callbacks import BasePredictionWriter
from typing_extensions import override

# Trainer arguments a command sets itself: it logs nothing, saves no checkpoint and
# brings its own writer callback.
TRAINER_SKIP = frozenset({"callbacks", "logger", "plugins", "enable_checkpointing", "default_root_dir"})
SHARED_FOLDER_HINT = "Under multi-node DDP, output_dir must be on a filesystem shared by all nodes."

Rows = Sequence[Mapping[str, Any]]


def add_trainer_arguments(parser: ArgumentParser) -> None:
    """``--trainer.*``: the Lightning ``Trainer`` options, less those in :data:`TRAINER_SKIP`."""
    parser.add_class_arguments(pl.Trainer, "trainer", instantiate=False, skip=set(TRAINER_SKIP))


def trainer_options(cfg: Namespace) -> dict[str, Any]:
    """The parsed ``--trainer.*`` options as ``Trainer`` keyword arguments."""
    return {k: v for k, v in vars(cfg.trainer).items() if not k.startswith("__")}


def predict_trainer(options: Optional[Mapping[str, Any]], writer: BasePredictionWriter) -> pl.Trainer:
    """A ``Trainer`` for a command's predict loop: no logger, no checkpoints, ``writer``
    as its callback; ``options`` (``--trainer.*``) override the rest."""
    return pl.Trainer(**{"logger": False, "enable_checkpointing": False, **(options or {})}, callbacks=[writer])


def append_rows(path: Path, fields: Sequence[str], rows: Rows) -> None:
    """Append ``rows`` to the CSV ``path``, with the header first when the file is new."""
    _write(path, fields, rows, "a")


def write_rows(path: Path, fields: Sequence[str], rows: Rows) -> Path:
    """Write ``rows`` to the CSV ``path`` under a header (a merged table)."""
    return _write(path, fields, rows, "w")


def _write(path: Path, fields: Sequence[str], rows: Rows, mode: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = mode == "w" or not path.exists()
    with open(path, mode, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        if header:
            writer.writeheader()
        writer.writerows(rows)
    return path


def read_rows(files: Iterable[Path]) -> list[dict[str, str]]:
    """Every row of ``files``, in the order given (cells as text)."""
    rows: list[dict[str, str]] = []
    for path in files:
        with open(path, newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


class RankCSVWriter(BasePredictionWriter):
    """Appends every predict batch's rows to this rank's CSV files.

    A subclass says, in :meth:`batch_rows`, which rows a batch's prediction gives and in
    which file; the hook and the file handling live here once.

    Example:
        >>> from pathlib import Path
        >>> class Echo(RankCSVWriter):
        ...     def batch_rows(self, trainer, pl_module, prediction):
        ...         return [(Path("echo.rank0.csv"), ("x",), [{"x": v} for v in prediction])]
        >>> writer = Echo()
        >>> for path, fields, rows in writer.batch_rows(None, None, [1, 2]):
        ...     append_rows(path, fields, rows)
        >>> read_rows([Path("echo.rank0.csv")])
        [{'x': '1'}, {'x': '2'}]
    """

    def __init__(self) -> None:
        super().__init__(write_interval="batch")

    def batch_rows(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any
    ) -> Iterable[tuple[Path, Sequence[str], Rows]]:
        """``(file, columns, rows)`` for each table that the batch's ``prediction`` adds to."""
        raise NotImplementedError

    @override
    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Optional[Sequence[int]],
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        for path, fields, rows in self.batch_rows(trainer, pl_module, prediction):
            append_rows(path, fields, rows)

"""Where the audit's picture goes: one writer per Lightning logger type, looked up by the
logger's class (subclasses included). Lightning loggers share no image API, so each
writer speaks its logger's own: TensorBoard ``add_image``, MLflow ``log_image`` (an
artifact), W&B ``log_image``. Any other logger (CSV, a user's own), or none at all, gets
PNG files under its log folder, so a picture is never dropped without a word.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TypeVar, Union, cast

import numpy as np
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from torch import Tensor

from ..registry import Registry


@dataclass(frozen=True)
class AuditPicture:
    """One audit grid: ``grid [3, H, W]`` in [0, 1], its column titles, the metric
    prefix it is filed under (``"cam_audit"``), and when it was made."""

    grid: Tensor
    titles: Sequence[str]
    prefix: str
    epoch: int
    step: int

    @property
    def file_name(self) -> str:
        return f"epoch={self.epoch}-step={self.step}.png"

    @property
    def caption(self) -> str:
        return " | ".join(self.titles)

    def to_uint8(self) -> np.ndarray:
        """``[H, W, 3]`` uint8, what image files and the MLflow/W&B APIs take."""
        array = (self.grid.detach().float().clamp(0, 1) * 255).round().byte()
        return array.permute(1, 2, 0).cpu().numpy()


GridWriter = Callable[[Logger, AuditPicture], object]
GRID_WRITERS: Registry[type, GridWriter] = Registry("grid writer")  # keyed by logger type
LoggerT = TypeVar("LoggerT", bound=Logger)


def register_grid_writer(
    logger_type: type[LoggerT], *, replace: bool = False
) -> Callable[[Callable[[LoggerT, AuditPicture], object]], Callable[[LoggerT, AuditPicture], object]]:
    """Register ``fn(logger, picture)`` for ``logger_type`` and its subclasses; a type that
    already has a writer is refused unless ``replace``."""

    def decorator(fn: Callable[[LoggerT, AuditPicture], object]) -> Callable[[LoggerT, AuditPicture], object]:
        # looked up by the logger's class, so fn only ever gets a logger_type
        GRID_WRITERS.register(logger_type, cast(GridWriter, fn), replace=replace)
        return fn

    return decorator


def grid_writer(logger: Logger) -> GridWriter:
    """The writer of the nearest registered class in the logger's MRO; PNG files otherwise."""
    for cls in type(logger).__mro__:
        if cls in GRID_WRITERS:
            return GRID_WRITERS[cls]
    return write_png_for_logger


def publish(picture: AuditPicture, loggers: Sequence[Logger], default_dir: Union[str, Path]) -> None:
    """Send the picture to every logger; with no logger, PNG files under ``default_dir``."""
    if not loggers:
        write_png(Path(default_dir), picture)
    for logger in loggers:
        writer = grid_writer(logger)
        if writer is write_png_for_logger:  # the one writer that may need a fallback folder
            write_png_for_logger(logger, picture, default_dir)
        else:
            writer(logger, picture)


@register_grid_writer(TensorBoardLogger)
def write_tensorboard(logger: TensorBoardLogger, picture: AuditPicture) -> None:
    writer = logger.experiment
    writer.add_image(f"{picture.prefix}/grid", picture.grid, picture.step)
    writer.add_text(f"{picture.prefix}/grid_columns", picture.caption, picture.step)


@register_grid_writer(MLFlowLogger)
def write_mlflow(logger: MLFlowLogger, picture: AuditPicture) -> None:
    """An artifact per audit: ``<prefix>/epoch=N-step=M.png`` in the run's artifacts."""
    client, run_id = logger.experiment, logger.run_id
    client.log_image(run_id, picture.to_uint8(), artifact_file=f"{picture.prefix}/{picture.file_name}")
    client.log_text(run_id, picture.caption, f"{picture.prefix}/columns.txt")


@register_grid_writer(WandbLogger)
def write_wandb(logger: WandbLogger, picture: AuditPicture) -> None:
    logger.log_image(f"{picture.prefix}/grid", [picture.to_uint8()], step=picture.step, caption=[picture.caption])


def write_png_for_logger(
    logger: Logger, picture: AuditPicture, default_dir: Union[str, Path, None] = None
) -> Optional[Path]:
    """A logger without an image API: PNG files beside its own files (its ``log_dir`` or
    ``save_dir``); a logger with neither gets them under ``default_dir``
    (``trainer.default_root_dir``), with a warning that says where."""
    folder = _logger_dir(logger)
    if folder is None:
        if default_dir is None:
            raise ValueError(
                f"The {type(logger).__name__} logger has neither log_dir nor save_dir, and no default folder was "
                "given for its audit pictures."
            )
        folder = Path(default_dir)
        warnings.warn(
            f"CAMAudit: the {type(logger).__name__} logger has neither log_dir nor save_dir and no image API; "
            f"its audit pictures are written as PNG files under {folder / picture.prefix} (trainer.default_root_dir).",
            UserWarning,
            stacklevel=2,
        )
    return write_png(folder, picture)


def write_png(folder: Path, picture: AuditPicture) -> Path:
    """``folder/<prefix>/epoch=N-step=M.png``; the column titles ride in the PNG's text chunk."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    path = Path(folder) / picture.prefix / picture.file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text("columns", picture.caption)
    Image.fromarray(picture.to_uint8()).save(path, pnginfo=info)
    return path


def _logger_dir(logger: Logger) -> Optional[Path]:
    folder = logger.log_dir or logger.save_dir  # both declared on Logger (None when a logger has no folder)
    return Path(folder) if folder else None

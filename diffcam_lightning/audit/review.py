"""The audit's TensorBoard review: what makes the run readable at a glance.

- a Custom Scalars layout, written once per run: one chart per figure family (the first
  part of each ``<prefix>/<family>/<method>`` key, so a family added later gets its chart
  with no further work), one line per method (the chart's tag is a regex over the family);
- each alarm's full message in the Text tab (``<prefix>/alarm_message``) at its step;
- the HParams tab: the run's hyperparameters, with the final ``val/acc``, ``<prefix>/alarm``
  and ``<prefix>/first_alarm_epoch`` (-1: no alarm) as its metrics.

Only ``TensorBoardLogger`` has these tabs; other loggers get the scalars and the picture.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lightning.pytorch.loggers import Logger, TensorBoardLogger

# metrics of the HParams tab besides the audit's own (the last value logged under each name)
HPARAMS_METRICS: tuple[str, ...] = ("val/acc",)
NO_ALARM = -1  # first_alarm_epoch of a run without an alarm


def families(keys: Iterable[str]) -> list[str]:
    """The figure families of the audit's keys (``drift/meandiffgradcam`` -> ``drift``), the
    alarm's first, the others in the keys' order."""
    found = list(dict.fromkeys(key.split("/", 1)[0] for key in keys))
    return sorted(found, key=lambda family: family != "alarm")


def custom_scalars_layout(keys: Iterable[str], prefix: str) -> dict[str, dict[str, list[Any]]]:
    """``{prefix: {family: ["Multiline", [regex]]}}``: one chart per family, whose regex
    matches the family's own scalar and every ``<family>/<method>`` below it."""
    charts = {family: ["Multiline", [rf"^{re.escape(prefix)}/{re.escape(family)}(/.*)?$"]] for family in families(keys)}
    return {prefix: charts}


def tensorboard_loggers(loggers: Sequence[Logger]) -> list[TensorBoardLogger]:
    return [logger for logger in loggers if isinstance(logger, TensorBoardLogger)]


def write_layout(logger: TensorBoardLogger, keys: Iterable[str], prefix: str) -> None:
    logger.experiment.add_custom_scalars(custom_scalars_layout(keys, prefix))


def write_alarm_message(logger: TensorBoardLogger, prefix: str, message: str, step: int) -> None:
    logger.experiment.add_text(f"{prefix}/alarm_message", message, step)


def hparams_metrics(prefix: str) -> list[str]:
    return [*HPARAMS_METRICS, f"{prefix}/alarm", f"{prefix}/first_alarm_epoch"]


def flat_hparams(params: Mapping[str, Any], parent: str = "") -> dict[str, Any]:
    """Nested hyperparameters as ``a/b`` keys; values TensorBoard cannot show become text."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{parent}/{key}" if parent else str(key)
        if isinstance(value, Mapping):
            out.update(flat_hparams(value, name))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def write_hparams(logger: TensorBoardLogger, params: Mapping[str, Any], prefix: str) -> None:
    """The HParams tab's experiment, listing ``hparams_metrics`` as its metrics.

    Written before Lightning logs its own (at ``on_fit_start``): TensorBoard keeps the first
    summary of each tag, so this one, with the audit's metrics, is the one shown."""
    from torch.utils.tensorboard.summary import hparams

    metrics = dict.fromkeys(hparams_metrics(prefix), 0.0)  # names only: values are the logged scalars
    writer = logger.experiment._get_file_writer()
    for summary in hparams(flat_hparams(params), metrics):  # type: ignore[no-untyped-call]  # torch's, untyped
        writer.add_summary(summary)

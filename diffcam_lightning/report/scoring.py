"""Per-sample scores inside a Lightning predict loop, so ``--trainer.devices 8
--trainer.strategy ddp`` spreads the images over GPUs with no code change.

Each batch: one engine call per model (clean, and SHAM-tuned when given) for all
methods; rows ``(sample, label, target, metric, method, score)`` where ``metric`` is
``similarity`` (a DiffGradCAM variant vs its base, clean model), ``susceptibility``
(clean vs SHAM-tuned map of the same method) or ``correct_clean`` / ``correct_sham``.
A :class:`ScoreWriter` appends each rank's rows to its own CSV; rank zero merges them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Optional, get_args

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from typing_extensions import override

from ..cams import CAMEngine
from ..predict_loop import SHARED_FOLDER_HINT, RankCSVWriter, read_rows, write_rows
from ..saliency import cam_mse
from .faithfulness import FaithfulnessSpec, batch_faithfulness_scores, row_metric
from .pairs import SIMILARITY_PAIRS  # re-exported

FIELDS = ("sample", "label", "target", "metric", "method", "score")
Row = tuple[int, int, int, str, str, float]  # one score, in FIELDS order


class IndexedSubset(Dataset[dict[str, Tensor]]):
    """A subset of a dict-batch dataset whose samples carry their original ``index``
    (the score rows name it, so ranks' rows merge and gaps are found).

    Args:
        dataset: A dataset of dict samples.
        indices: The samples kept, in order.

    Attributes:
        indices: As given, a list.

    Example:
        >>> subset = IndexedSubset([{"x": 1}, {"x": 2}, {"x": 3}], [2, 0])
        >>> len(subset), subset[0]
        (2, {'x': 3, 'index': tensor(2)})
    """

    def __init__(self, dataset: Dataset[dict[str, Tensor]], indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    @override
    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.indices[i]
        item = dict(self.dataset[index])
        item["index"] = torch.tensor(index)
        return item


ScoreTarget = Literal["label", "prediction"]


class ScoringModule(pl.LightningModule):
    """The clean (and SHAM-tuned) model of one architecture; ``predict_step`` scores a batch.

    One engine call per model for all methods; the rows (``FIELDS`` order) are the
    similarity, susceptibility, accuracy and faithfulness scores of every sample, which
    :class:`ScoreWriter` appends to ``<report_name>.rank<R>.csv``.

    Args:
        clean: The clean model (put in eval mode).
        sham: Its SHAM-tuned counterpart, or ``None`` (no susceptibility).
        methods: Canonical CAM method names.
        target: The class explained: the sample's ``label`` or the clean model's
            ``prediction``.
        cam_size: ``"input"``: maps compared at input resolution; ``None``: on the CAM grid.
        scorecam_batch_size: Masked inputs per ScoreCAM forward.
        faithfulness: The faithfulness metrics to score (``None``: none).
        engine_options: ``{"clean"|"sham": CAMEngine keyword arguments}`` such as the
            ``target_layer`` a checkpoint was trained at.
        report_name: The architecture's label: names its score files.

    Attributes:
        report_name: As given.
        engines: ``{"clean"|"sham": CAMEngine}``.

    Raises:
        ValueError: ``target`` is not ``label`` or ``prediction``.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        >>> module = ScoringModule(model, None, ["gradcam", "meandiffgradcam"], report_name="tiny")
        >>> batch = {"image": torch.randn(2, 3, 16, 16), "label": torch.tensor([0, 2]), "index": torch.tensor([5, 7])}
        >>> sorted({(sample, metric, method) for sample, _, _, metric, method, _ in module.predict_step(batch, 0)})
        [(5, 'correct_clean', '-'), (5, 'similarity', 'meandiffgradcam'), (7, 'correct_clean', '-'), (7, 'similarity', 'meandiffgradcam')]
    """

    def __init__(
        self,
        clean: nn.Module,
        sham: Optional[nn.Module],
        methods: Sequence[str],
        target: ScoreTarget = "label",
        cam_size: Optional[Literal["input"]] = "input",
        scorecam_batch_size: int = 32,
        faithfulness: Optional[FaithfulnessSpec] = None,
        engine_options: Optional[dict[str, dict[str, Any]]] = None,
        report_name: str = "scores",
    ) -> None:
        super().__init__()
        if target not in get_args(ScoreTarget):
            raise ValueError(f"target must be 'label' or 'prediction'; got {target!r}.")
        self.report_name = report_name
        self.clean, self.sham = clean.eval(), sham.eval() if sham is not None else None
        self.methods = list(methods)
        self.target, self.cam_size = target, cam_size
        self.faithfulness = faithfulness or FaithfulnessSpec(enabled=False)
        self.faith_metrics, self.faith_methods = self.faithfulness.resolved(self.methods)
        options = engine_options or {}
        self.engines = {
            kind: CAMEngine(model, perturbation_batch_size=scorecam_batch_size, **options.get(kind, {}))
            for kind, model in (("clean", self.clean), ("sham", self.sham))
            if model is not None
        }

    @override
    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> list[Row]:
        x, labels, index = batch["image"], batch["label"], batch["index"]
        targets = labels if self.target == "label" else None
        clean = self.engines["clean"].compute(x, targets, self.methods, size=self.cam_size)
        rows = self._rows(index, labels, clean.targets, "correct_clean", "-", clean.logits.argmax(1) == labels)
        for diff, base in SIMILARITY_PAIRS.items():
            if diff in clean.maps and base in clean.maps:
                score = cam_mse(clean.maps[diff], clean.maps[base])
                rows += self._rows(index, labels, clean.targets, "similarity", diff, score)
        if "sham" in self.engines:
            sham = self.engines["sham"].compute(x, clean.targets, self.methods, size=self.cam_size)
            rows += self._rows(index, labels, clean.targets, "correct_sham", "-", sham.logits.argmax(1) == labels)
            for method in self.methods:
                score = cam_mse(clean.maps[method], sham.maps[method])
                rows += self._rows(index, labels, clean.targets, "susceptibility", method, score)
        if self.faith_metrics:
            results = {"clean": clean, **({"sham": sham} if "sham" in self.engines else {})}
            for kind, result in results.items():
                model = self.clean if kind == "clean" else self.sham
                assert model is not None  # a sham engine exists only with a sham model
                values = batch_faithfulness_scores(
                    model,
                    x,
                    result.maps,
                    clean.targets,
                    self.faith_metrics,
                    self.faith_methods,
                    self.faithfulness,
                    self.engines[kind],
                )
                for (metric, method), score in values.items():
                    rows += self._rows(index, labels, clean.targets, row_metric(metric, kind), method, score)
        return rows

    @staticmethod
    def _rows(index: Tensor, labels: Tensor, targets: Tensor, metric: str, method: str, scores: Tensor) -> list[Row]:
        values = scores.float().tolist()
        return [
            (int(i), int(y), int(t), metric, method, float(s))
            for i, y, t, s in zip(index.tolist(), labels.tolist(), targets.tolist(), values)
        ]


class ScoreWriter(RankCSVWriter):
    """Appends every batch's rows to ``<folder>/<report_name>.rank<R>.csv``, one file per
    rank and architecture (``report_name`` of the :class:`ScoringModule` it writes for).

    Args:
        folder: The folder of the per-rank score files.

    Raises:
        TypeError: At the predict loop's start, for a module that is not a ``ScoringModule``.
    """

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = Path(folder)

    def path(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path:
        """This rank's score file for ``pl_module``'s architecture."""
        return self.folder / f"{_report_name(pl_module)}.rank{trainer.global_rank}.csv"

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if trainer.is_global_zero:  # files of an earlier run with more ranks must not leak in
            for stale in self.folder.glob(f"{_report_name(pl_module)}.rank*.csv"):
                stale.unlink()
        trainer.strategy.barrier("diffcam_report_clean")
        write_rows(self.path(trainer, pl_module), FIELDS, [])

    @override
    def batch_rows(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: list[Row]
    ) -> Iterator[tuple[Path, Sequence[str], list[dict[str, Any]]]]:
        yield self.path(trainer, pl_module), FIELDS, [dict(zip(FIELDS, row)) for row in prediction]


def _report_name(pl_module: pl.LightningModule) -> str:
    if not isinstance(pl_module, ScoringModule):
        raise TypeError(f"ScoreWriter writes the scores of a ScoringModule, not of a {type(pl_module).__name__}.")
    return pl_module.report_name


def merge_rank_files(folder: Path, name: str, expected: Optional[Sequence[int]] = None) -> list[dict[str, Any]]:
    """All ranks' rows, each (sample, metric, method) once (DDP pads with repeats), sorted.
    With ``expected`` sample indices, a sample without rows is an error (e.g. ranks on other
    nodes writing to a folder rank zero cannot see)."""
    merged: dict[tuple[int, str, str], dict[str, Any]] = {}
    files = sorted(Path(folder).glob(f"{name}.rank*.csv"))
    if not files:
        raise FileNotFoundError(f"No per-rank score files {name}.rank*.csv in {folder}.")
    for raw in read_rows(files):
        row: dict[str, Any] = {
            **raw,
            "sample": int(raw["sample"]),
            "label": int(raw["label"]),
            "target": int(raw["target"]),
            "score": float(raw["score"]),
        }
        merged.setdefault((row["sample"], row["metric"], row["method"]), row)
    if expected is not None:
        missing = sorted(set(expected) - {sample for sample, _, _ in merged})
        if missing:
            raise RuntimeError(
                f"{len(missing)} of {len(set(expected))} samples have no scores in {folder} "
                f"(files: {', '.join(p.name for p in files)}; first missing: {missing[:5]}). " + SHARED_FOLDER_HINT
            )
    return [merged[k] for k in sorted(merged)]

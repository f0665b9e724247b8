"""``run_report``: per-sample scores in a Trainer's predict loop, then (rank zero) the
raw scores, Tables 1/3/4 + accuracy (CSV, Markdown, LaTeX) and Figure 2-style grids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from ..cams import PAPER_METHODS, CAMEngine, method_names
from ..predict_loop import predict_trainer, write_rows
from ..saliency import sham_target
from .data import DataSpec, ReportData, build_report_data
from .faithfulness import FaithfulnessSpec, faithfulness_table
from .figures import FIGURE_METHODS, figure_grid
from .scoring import FIELDS, ScoreTarget, ScoreWriter, ScoringModule, merge_rank_files
from .sources import ModelSource, ResolvedModel, resolve, timm_name
from .stats import GroupedScores, accuracy_table, group_scores, similarity_table, susceptibility_table
from .tables import Table
from .timing import timing_table


@dataclass
class ArchitectureSpec:
    """A clean model and, for susceptibility, its SHAM-tuned counterpart (same arch).

    Args:
        clean: The clean model.
        sham: Its SHAM-tuned counterpart (``None``: no susceptibility table for it).
        name: The label in tables, figures and score files (default: the clean arch).

    Example:
        >>> ArchitectureSpec(ModelSource("resnet18")).label
        'resnet18'
    """

    clean: ModelSource
    sham: Optional[ModelSource] = None
    name: Optional[str] = None

    @property
    def label(self) -> str:
        """``name``, else the clean model's arch."""
        return self.name or self.clean.arch_name


@dataclass
class TimingSpec:
    """Table 1 protocol: ``runs`` single-image runs per method, the first ``discard`` dropped.

    Args:
        enabled: Time the methods (Table 1).
        runs: Runs per method, warm-up included.
        discard: Warm-up runs left out of the mean.
        pytorch_grad_cam: Time pytorch-grad-cam beside ours, when installed.
        methods: The methods timed (default: the report's).
    """

    enabled: bool = True
    runs: int = 110
    discard: int = 10
    pytorch_grad_cam: bool = True
    methods: Optional[list[str]] = None


@dataclass
class ReportOptions:
    """What ``diffcam report`` scores and writes (its ``report.*`` options).

    Args:
        models: The architectures, each a clean model and optionally its SHAM-tuned one.
        output_dir: The folder of the tables, figures, scores and report.md.
        data: The report's images.
        methods: CAM methods (default: the paper's twelve).
        scorecam: Keep ScoreCAM among the methods (one forward per channel: the slowest).
        target: The class explained: the sample's label or the clean model's prediction.
        cam_size: input: maps compared at input resolution (as pytorch-grad-cam returns
            them); null: on the CAM grid.
        scorecam_batch_size: Masked inputs per ScoreCAM forward.
        figure_samples: Images per figure grid.
        timing: The run-time table (Table 1).
        faithfulness: The faithfulness table.

    Raises:
        ValueError: From :func:`run_report`: no models, two models with one label, an
            unknown method.

    Example:
        >>> options = ReportOptions(models=[ArchitectureSpec(ModelSource("resnet18"))], scorecam=False)
        >>> options.target, options.data.source, "scorecam" in resolve_methods(options.methods, options.scorecam)
        ('label', 'synthetic', False)
    """

    models: list[ArchitectureSpec]
    output_dir: str = "report"
    data: DataSpec = field(default_factory=DataSpec)
    methods: Optional[list[str]] = None
    scorecam: bool = True
    target: ScoreTarget = "label"
    cam_size: Optional[Literal["input"]] = "input"
    scorecam_batch_size: int = 32
    figure_samples: int = 4
    timing: TimingSpec = field(default_factory=TimingSpec)
    faithfulness: FaithfulnessSpec = field(default_factory=FaithfulnessSpec)


def resolve_methods(methods: Optional[Sequence[str]], scorecam: bool) -> list[str]:
    """The report's methods: ``methods`` (default the paper's), less ScoreCAM unless ``scorecam``."""
    return [m for m in method_names(methods or PAPER_METHODS) if scorecam or m != "scorecam"]


def _load_pair(
    spec: ArchitectureSpec, num_classes: int, class_names: Optional[list[str]] = None
) -> tuple[ResolvedModel, Optional[ResolvedModel]]:
    clean = resolve(spec.clean, num_classes, class_names)
    sham = None
    if spec.sham is not None:
        if spec.sham.arch_name.split(".")[0] != spec.clean.arch_name.split(".")[0]:
            raise ValueError(
                f"{spec.label}: the SHAM-tuned model is a {spec.sham.arch}, the clean one a {spec.clean.arch}."
            )
        sham = resolve(spec.sham, num_classes, class_names)
    return clean, sham


def _engine_options(model: Optional[ResolvedModel]) -> dict[str, Any]:
    """What a model states for its CAMs (the layer it was trained at)."""
    return {} if model is None else {"target_layer": model.target_layer, "layout": model.layout}


@dataclass
class _Prepared:
    """One architecture as scored: its spec, data and models (for the tables and figures)."""

    spec: ArchitectureSpec
    data: ReportData
    clean: ResolvedModel
    sham: Optional[ResolvedModel]


def run_report(options: ReportOptions, trainer_kwargs: Optional[dict[str, Any]] = None) -> dict[str, Path]:
    """Run the report; returns the written files by name (on rank zero; ``{}`` elsewhere)."""
    _check_labels(options.models)
    methods = resolve_methods(options.methods, options.scorecam)
    out = Path(options.output_dir)
    trainer = predict_trainer(trainer_kwargs, ScoreWriter(out / "scores"))
    prepared = [_score(spec, options, methods, trainer) for spec in options.models]
    if not trainer.is_global_zero:
        return {}
    rows = []
    for arch in prepared:
        merged = merge_rank_files(out / "scores", arch.spec.label, expected=arch.data.dataset.indices)
        rows += [{"arch": arch.spec.label, **row} for row in merged]
    written = {"scores": write_rows(out / "scores.csv", ["arch", *FIELDS], rows)}
    tables = _score_tables(group_scores(rows), options, methods, any(a.sham is not None for a in prepared))
    device = trainer.strategy.root_device
    for arch in prepared:
        if options.timing.enabled:
            tables.append(_timing(arch, options.timing, methods, device))
        written.update(_figures(arch, options, methods, device, out))
    for table in tables:
        for path in table.write(out / "tables"):
            written[f"{table.name}.{path.suffix[1:]}"] = path
    written["report"] = _write_index(out, tables, written)
    return written


def _check_labels(models: Sequence[ArchitectureSpec]) -> None:
    """At least one model, and a distinct label for each (they name the score files)."""
    if not models:
        raise ValueError("The report needs at least one entry under 'models'.")
    labels = [spec.label for spec in models]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"Two report models share the label {duplicates[0]!r}; give each entry a distinct 'name:'.")


def _score(spec: ArchitectureSpec, options: ReportOptions, methods: list[str], trainer: pl.Trainer) -> _Prepared:
    """Score one architecture's samples in the trainer's predict loop (every rank)."""
    data = build_report_data(options.data, timm_name(spec.clean.arch_name))
    clean, sham = _load_pair(spec, data.num_classes, data.class_names)
    module = ScoringModule(
        clean.model,
        sham.model if sham else None,
        methods,
        options.target,
        options.cam_size,
        options.scorecam_batch_size,
        faithfulness=options.faithfulness,
        engine_options={"clean": _engine_options(clean), "sham": _engine_options(sham)},
        report_name=spec.label,
    )
    loader = DataLoader(data.dataset, batch_size=options.data.batch_size, num_workers=options.data.num_workers)
    trainer.predict(module, loader, return_predictions=False)
    trainer.strategy.barrier()
    return _Prepared(spec, data, clean, sham)


def _score_tables(scores: GroupedScores, options: ReportOptions, methods: list[str], with_sham: bool) -> list[Table]:
    """Similarity, susceptibility (with SHAM-tuned models), faithfulness and accuracy."""
    tables = [similarity_table(scores)]
    if with_sham:
        tables.append(susceptibility_table(scores, methods))
    faith_metrics, faith_methods = options.faithfulness.resolved(methods)
    if faith_metrics:
        tables.append(faithfulness_table(scores, faith_metrics, faith_methods))
    tables.append(accuracy_table(scores))
    return tables


def _timing(arch: _Prepared, timing: TimingSpec, methods: list[str], device: torch.device) -> Table:
    """Table 1 for one architecture: its clean model on its first sample."""
    first = arch.data.dataset[0]
    return timing_table(
        arch.spec.label,
        arch.clean.model.to(device),
        first["image"][None].to(device),
        int(first["label"]),
        timing.methods or methods,
        timing.runs,
        timing.discard,
        timing.pytorch_grad_cam,
        target_layer=arch.clean.target_layer,
    )


def _figures(
    arch: _Prepared, options: ReportOptions, methods: Sequence[str], device: torch.device, out: Path
) -> dict[str, Path]:
    """Figure 2-style grids of the first ``figure_samples`` images, clean and SHAM-tuned."""
    spec, data = arch.spec, arch.data
    count = min(options.figure_samples, len(data.dataset))
    if count < 1:
        return {}
    items = [data.dataset[i] for i in range(count)]
    images = torch.stack([item["image"] for item in items]).to(device)
    labels = torch.stack([item["label"] for item in items]).to(device)
    methods = [m for m in FIGURE_METHODS if m in methods]
    written = {}
    for kind, model in (("clean", arch.clean), ("sham", arch.sham)):
        if model is None or not methods:
            continue
        engine = CAMEngine(model.model.to(device), **_engine_options(model))
        targets = labels if options.target == "label" else None
        result = engine.compute(images, targets, methods, size="input")
        target_maps = _target_saliency(kind, items, result.grid, images.shape[-2:], model)
        path = out / "figures" / f"{spec.label}_{kind}.png"
        title = f"{spec.label}: {'clean' if kind == 'clean' else 'SHAM-tuned'} model"
        written[f"figure_{spec.label}_{kind}"] = figure_grid(images, result.maps, target_maps, title, path, methods)
    return written


def _target_saliency(
    kind: str, items: list[dict[str, Any]], grid: tuple[int, int], size: Sequence[int], model: ResolvedModel
) -> Optional[torch.Tensor]:
    """The SHAM the model was tuned with (its checkpoint's entropy and pattern) on the CAM
    grid for a SHAM-tuned model; the human maps (if every shown sample has one) for a clean
    model; otherwise omitted, as the paper does for ImageNet."""
    if kind == "sham":
        sham = sham_target(tuple(grid), model.sham_entropy, model.sham_pattern)[None, None].float()
        return torch.nn.functional.interpolate(sham, size=tuple(size), mode="nearest")[0].expand(len(items), -1, -1)
    if all(bool(item.get("has_saliency", False)) for item in items):
        return torch.stack([item["saliency"] for item in items])
    return None


def _write_index(out: Path, tables: list[Table], written: dict[str, Path]) -> Path:
    parts = ["# CAM report\n"]
    for table in tables:
        files = ", ".join(f"[{table.name}.{ext}](tables/{table.name}.{ext})" for ext in ("csv", "md", "tex"))
        parts.append(f"{table.to_markdown()}\n{files}\n")
    figures = [p for k, p in written.items() if k.startswith("figure_")]
    parts += [f"![{p.stem}](figures/{p.name})\n" for p in figures]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path

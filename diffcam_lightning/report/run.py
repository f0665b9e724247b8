"""``run_report``: per-sample scores in a Trainer's predict loop, then (rank zero) the
raw scores, Tables 1/3/4 + accuracy (CSV, Markdown, LaTeX) and Figure 2-style grids."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from ..cams import PAPER_METHODS, CAMEngine, get_method
from ..saliency import sham_target
from .data import DataSpec, ReportData, build_report_data
from .faithfulness import FaithfulnessSpec, faithfulness_table
from .figures import FIGURE_METHODS, figure_grid
from .scoring import FIELDS, ScoreWriter, ScoringModule, merge_rank_files
from .sources import ModelSource, ResolvedModel, resolve, timm_name
from .stats import accuracy_table, group_scores, similarity_table, susceptibility_table
from .tables import Table
from .timing import timing_table


@dataclass
class ArchitectureSpec:
    """A clean model and, for susceptibility, its SHAM-tuned counterpart (same arch)."""

    clean: ModelSource
    sham: Optional[ModelSource] = None
    name: Optional[str] = None

    @property
    def label(self) -> str:
        return self.name or self.clean.arch_name


@dataclass
class TimingSpec:
    """Table 1 protocol: ``runs`` single-image runs per method, the first ``discard`` dropped."""

    enabled: bool = True
    runs: int = 110
    discard: int = 10
    pytorch_grad_cam: bool = True
    methods: Optional[list[str]] = None


@dataclass
class ReportOptions:
    models: list[ArchitectureSpec]
    output_dir: str = "report"
    data: DataSpec = field(default_factory=DataSpec)
    methods: Optional[list[str]] = None
    scorecam: bool = True
    target: str = "label"
    cam_size: str = "input"
    scorecam_batch_size: int = 32
    figure_samples: int = 4
    timing: TimingSpec = field(default_factory=TimingSpec)
    faithfulness: FaithfulnessSpec = field(default_factory=FaithfulnessSpec)


def resolve_methods(methods: Optional[Sequence[str]], scorecam: bool) -> list[str]:
    names = [get_method(m).name for m in (methods or PAPER_METHODS)]
    return [m for m in dict.fromkeys(names) if scorecam or m != "scorecam"]


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


def run_report(options: ReportOptions, trainer_kwargs: Optional[dict[str, Any]] = None) -> dict[str, Path]:
    """Run the report; returns the written files by name (on rank zero; ``{}`` elsewhere)."""
    if not options.models:
        raise ValueError("The report needs at least one entry under 'models'.")
    labels = [spec.label for spec in options.models]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"Two report models share the label {duplicates[0]!r}; give each entry a distinct 'name:'.")
    methods = resolve_methods(options.methods, options.scorecam)
    out = Path(options.output_dir)
    scores_dir = out / "scores"
    trainer = pl.Trainer(
        **{"logger": False, "enable_checkpointing": False, **(trainer_kwargs or {})},
        callbacks=[ScoreWriter(scores_dir)],
    )
    prepared = []
    for spec in options.models:
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
        )
        module.report_name = spec.label
        loader = DataLoader(data.dataset, batch_size=options.data.batch_size, num_workers=options.data.num_workers)
        trainer.predict(module, loader, return_predictions=False)
        trainer.strategy.barrier()
        prepared.append((spec, data, clean, sham))
    if not trainer.is_global_zero:
        return {}
    rows = []
    for spec, data, *_ in prepared:
        merged = merge_rank_files(scores_dir, spec.label, expected=data.dataset.indices)
        rows += [{"arch": spec.label, **row} for row in merged]
    written = {"scores": _write_scores(rows, out / "scores.csv")}
    scores = group_scores(rows)
    tables = [similarity_table(scores), accuracy_table(scores)]
    if any(spec.sham is not None for spec, *_ in prepared):
        tables.insert(1, susceptibility_table(scores, methods))
    faith_metrics, faith_methods = options.faithfulness.resolved(methods)
    if faith_metrics:
        tables.insert(len(tables) - 1, faithfulness_table(scores, faith_metrics, faith_methods))
    device = trainer.strategy.root_device
    for spec, data, clean, sham in prepared:
        first = data.dataset[0]
        if options.timing.enabled:
            tables.append(
                timing_table(
                    spec.label,
                    clean.model.to(device),
                    first["image"][None].to(device),
                    int(first["label"]),
                    options.timing.methods or methods,
                    options.timing.runs,
                    options.timing.discard,
                    options.timing.pytorch_grad_cam,
                    target_layer=clean.target_layer,
                )
            )
        written.update(_figures(spec, data, clean, sham, options, methods, device, out))
    for table in tables:
        for path in table.write(out / "tables"):
            written[f"{table.name}.{path.suffix[1:]}"] = path
    written["report"] = _write_index(out, tables, written)
    return written


def _write_scores(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["arch", *FIELDS])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _figures(
    spec: ArchitectureSpec,
    data: ReportData,
    clean: ResolvedModel,
    sham: Optional[ResolvedModel],
    options: ReportOptions,
    methods: Sequence[str],
    device: torch.device,
    out: Path,
) -> dict[str, Path]:
    count = min(options.figure_samples, len(data.dataset))
    if count < 1:
        return {}
    items = [data.dataset[i] for i in range(count)]
    images = torch.stack([item["image"] for item in items]).to(device)
    labels = torch.stack([item["label"] for item in items]).to(device)
    methods = [m for m in FIGURE_METHODS if m in methods]
    written = {}
    for kind, model in (("clean", clean), ("sham", sham)):
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

"""``run_explain``: resolve the model, the images and the classes; run the explain loop in
a Lightning ``Trainer.predict``; then (rank zero) merge the tables and write the page."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, get_args

from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torch.utils.data import DataLoader

from ..cams import method_names
from ..data.transforms import PairedTransform
from ..models.sources import load_model
from ..predict_loop import SHARED_FOLDER_HINT, predict_trainer, read_rows, write_rows
from .classes import TargetChoice, class_index, class_names_for
from .inputs import ExplainDataset, ExplainInputError, ImageItem, collect_images
from .module import PREDICTION_FIELDS, SKIPPED_FIELDS, ExplainModule, ExplainWriter

EXPLAIN_METHODS = ("gradcam", "gradcam++", "eigencam", "meandiffgradcam", "meandiffgradcam++")
DEFAULT_METHODS = EXPLAIN_METHODS  # the former name (the audit and the faithfulness table have their own defaults)


Interpolation = Literal["bilinear", "bicubic", "nearest", "lanczos"]


@dataclass
class ExplainOptions:
    """What ``diffcam explain`` explains, and how (its command-line options).

    Args:
        model: A SaliencyClassifier checkpoint (.ckpt), timm:NAME (or a bare timm name),
            torchvision:NAME, or a class path package.module.Name.
        images: Image files, folders (recursive) or CSV manifests (image[,label]).
        output_dir: The folder of the outputs (images/, maps/, predictions.csv, report.md).
        pretrained: The source's pretrained weights (timm/torchvision hub, or a factory's own).
        weights: A local weights file for the model.
        methods: CAM methods (diffcam_lightning.METHODS).
        target: Class to explain: predicted, label (the manifest's), or a class index or name
            for every image.
        top_k: With --target predicted: explain the top k classes.
        target_layer: CAM layer (dotted name); automatic by default.
        layout: Layout of the CAM layer's output (see CAMEngine); automatic, or the
            checkpoint's, by default.
        image_size: Input size (default: the model's timm data config).
        crop_pct: Resize to image_size / crop_pct, then centre-crop (default: the model's).
        mean: Normalisation mean per channel (default: the model's).
        std: Normalisation standard deviation per channel (default: the model's).
        interpolation: Resize interpolation (default: the model's).
        batch_size: Images per predict batch.
        num_workers: Data loader worker processes.
        skip_unreadable: Skip undecodable images and list them in skipped.csv (default: stop).
        overwrite: Replace a previous run's outputs in --output_dir (default: refuse a
            non-empty folder).

    Example:
        >>> options = ExplainOptions(model="timm:resnet50", images=["photos/"], top_k=3)
        >>> options.methods, options.target
        (['gradcam', 'gradcam++', 'eigencam', 'meandiffgradcam', 'meandiffgradcam++'], 'predicted')
    """

    model: str
    images: list[str]
    output_dir: str = "explain"
    pretrained: bool = False
    weights: Optional[str] = None
    methods: list[str] = field(default_factory=lambda: list(EXPLAIN_METHODS))
    target: str = "predicted"
    top_k: int = 1
    target_layer: Optional[str] = None
    layout: Optional[str] = None
    image_size: Optional[int] = None
    crop_pct: Optional[float] = None
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    interpolation: Optional[Interpolation] = None
    batch_size: int = 8
    num_workers: int = 0
    skip_unreadable: bool = False
    overwrite: bool = False


# what a run writes into output_dir: --overwrite removes these (and nothing else)
RUN_OUTPUTS = ("images", "maps", ".parts", "predictions.csv", "skipped.csv", "report.md")


def prepare_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` (an earlier run's ``images/`` and ``maps/`` would mix
    with this one's) unless ``overwrite``, which removes what a previous run wrote."""
    if out.exists() and not out.is_dir():
        raise ExplainInputError(f"--output_dir {out} is a file, not a folder.")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if present and not overwrite:
        raise ExplainInputError(
            f"--output_dir {out} is not empty ({', '.join(present[:6])}{', ...' if len(present) > 6 else ''}): its "
            "files would mix with this run's. Choose a new folder, or pass --overwrite to replace a previous run's "
            f"outputs ({', '.join(RUN_OUTPUTS)})."
        )
    for name in RUN_OUTPUTS if overwrite else ():
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def data_config(model: nn.Module, options: ExplainOptions) -> dict[str, Any]:
    """The model's timm data config (timm's defaults for non-timm models), with overrides."""
    from timm.data.config import resolve_model_data_config

    if options.interpolation is not None and options.interpolation not in get_args(Interpolation):
        raise ExplainInputError(
            f"--interpolation must be one of {', '.join(get_args(Interpolation))}; got {options.interpolation!r}."
        )
    config = dict(resolve_model_data_config(model))  # type: ignore[no-untyped-call]  # timm leaves it unannotated
    if options.image_size:
        config["input_size"] = (3, int(options.image_size), int(options.image_size))
    overrides: dict[str, Any] = {
        "crop_pct": options.crop_pct, "mean": options.mean, "std": options.std, "interpolation": options.interpolation
    }  # fmt: skip
    for key, value in overrides.items():
        if value is not None:
            config[key] = tuple(value) if isinstance(value, list) else value
    return config


def _labels(items: list[ImageItem], names: list[str], target: str) -> list[int]:
    """The manifest labels as class indices (-1 where none); ``--target label`` needs all."""
    labels = []
    for item in items:
        if item.label is None:
            if target == "label":
                raise ExplainInputError(
                    f"--target label: image {item.path} has no label (give a CSV manifest with a 'label' column)."
                )
            labels.append(-1)
        else:
            labels.append(class_index(item.label, names, where=f"label of {item.path}"))
    return labels


def run_explain(options: ExplainOptions, trainer_kwargs: Optional[dict[str, Any]] = None) -> dict[str, Path]:
    """Explain ``options.images``; returns the written files by name (``{}`` off rank zero)."""
    methods = list(method_names(options.methods))
    items = collect_images(options.images)
    loaded = load_model(options.model, pretrained=options.pretrained, weights=options.weights)
    names = class_names_for(loaded.num_classes, loaded.class_names)
    choice = TargetChoice.parse(options.target, options.top_k, names)
    labels = _labels(items, names, options.target)
    config = data_config(loaded.model, options)
    dataset = ExplainDataset(items, PairedTransform(config), tuple(config["input_size"][1:]))
    module = ExplainModule(
        loaded.model,
        methods,
        choice,
        items,
        labels,
        options.target_layer or loaded.target_layer,
        options.layout or loaded.layout,
        options.skip_unreadable,
    )
    out = Path(options.output_dir)
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]  # Lightning sets .rank on the function; under a multi-process launch every rank runs this; rank zero decides
        prepare_output_dir(out, options.overwrite)
    writer = ExplainWriter(out, items, names, config["mean"], config["std"])
    trainer = predict_trainer(trainer_kwargs, writer)
    loader = DataLoader(dataset, batch_size=options.batch_size, num_workers=options.num_workers)
    trainer.predict(module, loader, return_predictions=False)
    trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return {}
    written = {"predictions": _merge(out, "predictions", PREDICTION_FIELDS)}
    skipped = _merge(out, "skipped", SKIPPED_FIELDS)
    _check_complete(items, (written["predictions"], skipped), out)
    if skipped.stat().st_size > len(",".join(SKIPPED_FIELDS)) + 2:
        written["skipped"] = skipped
    else:
        skipped.unlink()
    shutil.rmtree(out / ".parts", ignore_errors=True)
    written["report"] = _write_page(out, written, module.engine.target_layer, loaded.source, methods, config)
    return written


def _merge(out: Path, kind: str, fields: Sequence[str]) -> Path:
    rows = read_rows(sorted((out / ".parts").glob(f"{kind}.rank*.csv")))
    if kind == "predictions":  # each image once, whatever a distributed sampler repeated
        rows = sorted({(r["png"], int(r["rank"])): r for r in rows}.values(), key=lambda r: (r["png"], int(r["rank"])))
    return write_rows(out / f"{kind}.csv", fields, rows)


def _check_complete(items: list[ImageItem], tables: Sequence[Path], out: Path) -> None:
    """Every image has a row (predicted or skipped): a rank whose files rank zero cannot
    see (another node's disk) must not silently drop its images, as in the report."""
    seen = {row["image"] for row in read_rows(tables)}
    missing = [str(item.path) for item in items if str(item.path) not in seen]
    if missing:
        raise RuntimeError(
            f"{len(missing)} of {len(items)} images have no row in {out} (first missing: {missing[:3]}). "
            + SHARED_FOLDER_HINT
        )


def _write_page(
    out: Path,
    written: dict[str, Path],
    layer: Optional[str],
    source: str,
    methods: Sequence[str],
    config: dict[str, Any],
) -> Path:
    rows = read_rows([written["predictions"]])
    size = "x".join(str(s) for s in config["input_size"][1:])
    parts = [
        "# diffcam explain\n",
        f"Model `{source}`, CAM layer `{layer}`, input {size} px, methods {', '.join(methods)}. "
        f"{len({r['png'] for r in rows})} images; raw maps in `maps/` (see docs/explain.md), the table in "
        "[predictions.csv](predictions.csv)"
        + (", unreadable files in [skipped.csv](skipped.csv)." if "skipped" in written else ".")
        + "\n",
    ]
    shown = set()
    for row in rows:
        if row["png"] in shown:
            continue
        shown.add(row["png"])
        parts.append(
            f"**{row['image']}**: {row['class_name']} ({float(row['probability']):.2f})\n\n![{row['image']}]({row['png']})\n"
        )
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path

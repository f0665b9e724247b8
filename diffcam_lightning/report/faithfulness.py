"""The report's faithfulness table: perturbation metrics (deletion / insertion AUC by
default) of the same maps on the clean and the SHAM-tuned model.

The paper (sec. 5.2) argues that insertion-deletion is unfit under passive fooling: it
judges a map's sensitivity to pixel perturbations, while a SHAM-tuned model keeps its
predictions and moves only its explanations. The table measures both sides: if the metric
saw the fooling, the SHAM-tuned GradCAM (drawn to the border) would score clearly worse than
the clean one, and the DiffGradCAMs (which resist the fooling) would not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from torch import Tensor, nn

from ..cams import CAMEngine
from ..cams import metrics as cam_metrics
from .stats import format_p, mean_std
from .tables import Table

FAITHFULNESS_METHODS: tuple[str, ...] = (
    "gradcam",
    "gradcam++",
    "meandiffgradcam",
    "maxdiffgradcam",
    "lsediffgradcam",
    "eigencam",
)
DEFAULT_METHODS = FAITHFULNESS_METHODS  # the former name (explain and the audit have their own DEFAULT_METHODS)
KINDS = {"clean": "clean", "sham": "SHAM-tuned"}


@dataclass
class FaithfulnessSpec:
    """The faithfulness table (its ``report.faithfulness.*`` options).

    Args:
        enabled: Score and write the table.
        metrics: Names of ``cams.metrics.METRICS`` that need no masks.
        methods: The methods scored (default: those of FAITHFULNESS_METHODS in the report).
        steps: Perturbation steps of the deletion / insertion curves.
        batch_size: Perturbed images per forward.

    Raises:
        ValueError: From :meth:`resolved`: a metric that needs masks, an unknown metric, a
            method outside the report's.

    Example:
        >>> FaithfulnessSpec().resolved(["gradcam", "eigencam", "xgradcam"])
        (['deletion', 'insertion'], ['gradcam', 'eigencam'])
    """

    enabled: bool = True
    metrics: list[str] = field(default_factory=lambda: ["deletion", "insertion"])
    methods: Optional[list[str]] = None
    steps: int = 20
    batch_size: int = 64

    def resolved(self, report_methods: Sequence[str]) -> tuple[list[str], list[str]]:
        """(metrics, methods) to score; methods default to those of FAITHFULNESS_METHODS in the report."""
        if not self.enabled:
            return [], []
        metrics = cam_metrics.check_metrics(self.metrics)
        masked = [m for m in metrics if cam_metrics.METRICS[m].needs_masks]
        if masked:
            raise ValueError(
                f"faithfulness metrics {masked} need masks; use ones without: "
                f"{', '.join(n for n, s in cam_metrics.METRICS.items() if not s.needs_masks)}."
            )
        methods = (
            list(self.methods) if self.methods is not None else [m for m in FAITHFULNESS_METHODS if m in report_methods]
        )
        missing = [m for m in methods if m not in report_methods]
        if missing:
            raise ValueError(
                f"faithfulness methods {missing} are not among the report's methods {list(report_methods)}."
            )
        return metrics, methods


def row_metric(metric: str, kind: str) -> str:
    """The ``metric`` column of a per-sample score row, e.g. ``deletion_clean``."""
    return f"{metric}_{kind}"


def batch_faithfulness_scores(
    model: nn.Module,
    x: Tensor,
    maps: dict[str, Tensor],
    targets: Tensor,
    metrics: Sequence[str],
    methods: Sequence[str],
    spec: FaithfulnessSpec,
    engine: Optional[CAMEngine] = None,
) -> dict[tuple[str, str], Tensor]:
    """``{(metric, method): [B]}`` for one batch of one model (``engine``: its CAM engine, for
    the metrics that re-explain)."""
    out = {}
    accepted = cam_metrics.accepted_options(metrics)
    options: dict[str, Any] = {
        k: v for k, v in {"steps": spec.steps, "batch_size": spec.batch_size}.items() if k in accepted
    }
    for method in methods:
        explain = None if engine is None else cam_metrics.explainer(engine, method)
        values = cam_metrics.evaluate(
            metrics, model, x, maps[method], targets, explain=explain, progress=False, **options
        )
        out.update({(metric, method): v for metric, v in values.items()})
    return out


# the former name (audit.faithfulness.faithfulness_scores is another function)
faithfulness_scores = batch_faithfulness_scores


def faithfulness_table(
    scores: dict[tuple[str, str, str], np.ndarray], metrics: Sequence[str], methods: Sequence[str]
) -> Table:
    """Mean ± std of each metric per (architecture, method), clean vs SHAM-tuned, with the
    Wilcoxon signed-rank p-value of the paired difference (same images)."""
    from scipy.stats import wilcoxon

    columns = ["architecture", "method"]
    for metric in metrics:
        better = cam_metrics.METRICS[metric].better
        columns += [f"{metric} clean ({better} = better)", f"{metric} SHAM-tuned", f"p ({metric})"]
    table = Table(
        "table_faithfulness",
        "Faithfulness of the maps on the clean and the SHAM-tuned model (mean ± std over images; "
        "p = Wilcoxon signed-rank, clean vs SHAM-tuned, same images)",
        columns,
    )
    archs = list(
        dict.fromkeys(arch for arch, metric, _ in scores if metric in {row_metric(m, "clean") for m in metrics})
    )
    for arch in archs:
        for method in methods:
            row = [arch, method]
            for metric in metrics:
                clean = scores.get((arch, row_metric(metric, "clean"), method))
                sham = scores.get((arch, row_metric(metric, "sham"), method))
                row.append(_finite_mean_std(clean))
                row.append(_finite_mean_std(sham))
                paired = False
                if clean is not None and sham is not None and len(clean) == len(sham) > 1:
                    # pairs with a NaN score (a non-finite map) on either side are left out
                    both = np.isfinite(clean) & np.isfinite(sham)
                    clean, sham = clean[both], sham[both]
                    paired = len(clean) > 1 and bool(np.any(clean != sham))
                row.append(format_p(float(wilcoxon(clean, sham).pvalue)) if paired else "n/a")
            table.rows.append(row)
    return table


def _finite_mean_std(values: Optional[np.ndarray]) -> str:
    """Mean ± std of the finite scores; the NaN ones (non-finite maps) are left out and counted."""

    if values is None:
        return "-"
    finite = values[np.isfinite(values)]
    left_out = len(values) - len(finite)
    text = mean_std(finite) if len(finite) else "n/a"
    return f"{text} ({left_out} non-finite left out)" if left_out else text

"""The paper's tables from per-sample scores: similarity (Table 3), susceptibility
(Table 4) and accuracy.

Both tables compare scores of the same images (two methods on one model), so the proper
test is the Wilcoxon signed-rank test on the per-image pairs (``scipy.stats.wilcoxon``);
the paper's rank-sum p-value (``scipy.stats.ranksums``, which treats the two sides as
independent samples) stays beside it for comparison."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy.stats import ranksums, wilcoxon

from .pairs import SIMILARITY_PAIRS
from .tables import Table

GroupedScores = dict[tuple[str, str, str], np.ndarray]  # (arch, metric, method) -> per-sample scores
Scores = GroupedScores  # the former name (audit.metrics.Scores is another type)


def group_scores(rows: Iterable[dict[str, Any]]) -> GroupedScores:
    """Score rows -> ``{(arch, metric, method): scores}``, each in sample order (so pairs line up)."""
    grouped: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: (r["arch"], r["metric"], r["method"], r["sample"])):
        grouped[(row["arch"], row["metric"], row["method"])].append(float(row["score"]))
    return {key: np.asarray(values) for key, values in grouped.items()}


def mean_std(values: np.ndarray) -> str:
    """``mean ± std`` (sample std; 0 for one value)."""
    return f"{values.mean():.4g} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.2g}"


def p_value(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon rank-sum p-value; NaN when either side has < 2 samples."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    return float(ranksums(a, b).pvalue)


def signed_rank_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the pairs ``(a[i], b[i])`` (the same
    sample, in ``group_scores``' sample order); 1.0 when every pair is equal, NaN when
    fewer than 2 pairs."""
    if len(a) != len(b):
        raise ValueError(f"Signed-rank test needs paired scores of the same samples; got {len(a)} and {len(b)} scores.")
    if len(a) < 2:
        return math.nan
    if np.array_equal(a, b):
        return 1.0  # scipy's own answer, without its division-by-zero warning
    return float(wilcoxon(a, b).pvalue)


def format_p(p: float) -> str:
    """A p-value in a table cell (``n/a`` for NaN)."""
    return "n/a" if math.isnan(p) else f"{p:.3e}"


def _archs(scores: GroupedScores) -> list[str]:
    return list(dict.fromkeys(arch for arch, _, _ in scores))


def similarity_table(scores: GroupedScores) -> Table:
    """Mean ± std MSE of each DiffGradCAM variant to its base; p-values MeanDiff vs Max / LSE,
    rank-sum (the paper's) and signed-rank (paired, the same images)."""
    variants = [v for v in SIMILARITY_PAIRS if any(m == v and k == "similarity" for _, k, m in scores)]
    columns = ["architecture", *variants]
    comparisons = [(f"mean{fam}", f"{k}{fam}") for fam in ("diffgradcam", "diffgradcam++") for k in ("max", "lse")]
    comparisons = [(a, b) for a, b in comparisons if a in variants and b in variants]
    columns += [f"{kind}({a} vs {b})" for a, b in comparisons for kind in ("p", "p signed-rank")]
    table = Table(
        "table3_similarity", "Similarity: MSE of each DiffGradCAM variant to its base (lower = closer)", columns
    )
    for arch in _archs(scores):
        found = {v: scores[(arch, "similarity", v)] for v in variants if (arch, "similarity", v) in scores}
        if not found:
            continue
        row = [arch] + [mean_std(found[v]) if v in found else "-" for v in variants]
        for a, b in comparisons:
            row += [format_p(p_value(found[a], found[b])), format_p(signed_rank_p(found[a], found[b]))]
        table.rows.append(row)
    return table


def susceptibility_table(scores: GroupedScores, methods: Sequence[str]) -> Table:
    """Mean ± std MSE between clean and SHAM-tuned maps; the best (lowest) per
    architecture in bold, with the rank-sum and the signed-rank p-value of best vs each
    other method."""
    archs = [a for a in _archs(scores) if any((a, "susceptibility", m) in scores for m in methods)]
    table = Table(
        "table4_susceptibility",
        "Susceptibility: MSE between clean and SHAM-tuned maps (lower = more resistant); "
        "p = Wilcoxon rank-sum (the paper's test), p signed-rank = Wilcoxon signed-rank on the "
        "same images (paired), of the best method vs this one",
        ["method", *[f"{a}" for a in archs], *[f"{kind} ({a})" for a in archs for kind in ("p", "p signed-rank")]],
    )
    best = {}
    for arch in archs:
        means = {
            m: scores[(arch, "susceptibility", m)].mean() for m in methods if (arch, "susceptibility", m) in scores
        }
        best[arch] = min(means, key=means.__getitem__)
    for method in methods:
        cells, ps = [], []
        for arch in archs:
            values = scores.get((arch, "susceptibility", method))
            if values is None:
                cells.append("-")
                ps += ["-", "-"]
                continue
            text = mean_std(values)
            cells.append(f"**{text}**" if method == best[arch] else text)
            if method == best[arch]:
                ps += ["best", "best"]
                continue
            reference = scores[(arch, "susceptibility", best[arch])]
            ps += [format_p(p_value(reference, values)), format_p(signed_rank_p(reference, values))]
        table.rows.append([method, *cells, *ps])
    return table


def accuracy_table(scores: GroupedScores) -> Table:
    """Top-1 accuracy of the clean and SHAM-tuned models on the report's samples."""
    table = Table(
        "accuracy", "Top-1 accuracy on the report's samples", ["architecture", "clean", "SHAM-tuned", "samples"]
    )
    for arch in _archs(scores):
        clean, sham = scores[(arch, "correct_clean", "-")], scores.get((arch, "correct_sham", "-"))
        table.rows.append(
            [arch, f"{clean.mean():.4f}", f"{sham.mean():.4f}" if sham is not None else "-", str(len(clean))]
        )
    return table

"""Signed-rank p-values of paired scores (issue 11, item 7): the same images under two
methods are paired by sample index, whatever the order of the rows."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy.stats import ranksums, wilcoxon

from diffcam_lightning.report.stats import group_scores, signed_rank_p, similarity_table, susceptibility_table


def rows_for(metric: str, values: dict[str, np.ndarray]) -> list[dict]:
    rows = [
        {"arch": "net", "metric": metric, "method": m, "sample": i, "score": float(v)}
        for m, scores in values.items()
        for i, v in enumerate(scores)
    ]
    random.Random(0).shuffle(rows)  # scores.csv order is not sample order
    return rows


def test_similarity_table_has_signed_rank_beside_rank_sum():
    rng = np.random.default_rng(0)
    base = rng.random(20)
    values = {
        "meandiffgradcam": base,
        "maxdiffgradcam": base + 0.01 + 0.002 * rng.standard_normal(20),  # a small, consistent shift
        "lsediffgradcam": base * 1.1,
    }
    table = similarity_table(group_scores(rows_for("similarity", values)))
    row = dict(zip(table.columns, table.rows[0]))
    a, b = values["meandiffgradcam"], values["maxdiffgradcam"]
    assert float(row["p signed-rank(meandiffgradcam vs maxdiffgradcam)"]) == pytest.approx(
        wilcoxon(a, b).pvalue, rel=1e-3
    )
    assert float(row["p(meandiffgradcam vs maxdiffgradcam)"]) == pytest.approx(ranksums(a, b).pvalue, rel=1e-3)
    # pairing matters: the shift is invisible to the unpaired test, obvious to the paired one
    assert wilcoxon(a, b).pvalue < 1e-4 < ranksums(a, b).pvalue


def test_susceptibility_table_signed_rank_against_the_best_method():
    rng = np.random.default_rng(1)
    values = {"gradcam": rng.random(12) + 0.5, "meandiffgradcam": rng.random(12)}
    table = susceptibility_table(group_scores(rows_for("susceptibility", values)), list(values))
    rows = {r[0]: dict(zip(table.columns, r)) for r in table.rows}
    assert rows["meandiffgradcam"]["p signed-rank (net)"] == "best"
    expected = wilcoxon(values["meandiffgradcam"], values["gradcam"]).pvalue
    assert float(rows["gradcam"]["p signed-rank (net)"]) == pytest.approx(expected, rel=1e-3)


def test_signed_rank_edge_cases():
    same = np.array([0.1, 0.2, 0.3])
    assert signed_rank_p(same, same.copy()) == 1.0
    assert math.isnan(signed_rank_p(np.array([0.1]), np.array([0.2])))
    with pytest.raises(ValueError, match="paired"):
        signed_rank_p(np.array([0.1, 0.2]), np.array([0.1, 0.2, 0.3]))

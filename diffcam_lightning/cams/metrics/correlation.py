"""Row-wise correlations of the metrics that correlate (Faithfulness and Monotonicity
Correlation, sMPRT, the sanity check), each matching SciPy's on the same rows."""

from __future__ import annotations

import torch
from torch import Tensor


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each pair of rows (float64): ``[B]``; NaN where a row is constant (as SciPy)."""
    a, b = a.double() - a.double().mean(dim=1, keepdim=True), b.double() - b.double().mean(dim=1, keepdim=True)
    r: Tensor = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1))
    return r


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of rows (ties get their average rank): ``[B]``;
    0 where either row is constant."""
    ra, rb = _average_ranks(a.flatten(1).double()), _average_ranks(b.flatten(1).double())
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    den = ra.norm(dim=1) * rb.norm(dim=1)
    return torch.where(den > 0, (ra * rb).sum(dim=1) / den.clamp(min=1e-300), torch.zeros_like(den)).float()


def _average_ranks(rows: Tensor) -> Tensor:
    out = torch.empty_like(rows)
    for i, row in enumerate(rows):
        _, inverse, counts = torch.unique(row, return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).to(rows.dtype)
        out[i] = (ends - (counts.to(rows.dtype) - 1) / 2)[inverse]
    return out

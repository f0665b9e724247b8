"""The paper's Table 3 pairs, shared by the scoring (``scoring.py``) and the tables
(``stats.py``) without either importing the other."""

from __future__ import annotations

from ..cams import DIFF_BASES

# DiffGradCAM variant -> the base it is compared with (paper Table 3): the Diff variants of
# GradCAM and GradCAM++ among the engine's own pairs
SIMILARITY_PAIRS: dict[str, str] = {diff: base for diff, base in DIFF_BASES.items() if base in ("gradcam", "gradcam++")}

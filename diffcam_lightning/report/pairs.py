"""The paper's Table 3 pairs, shared by the scoring (``scoring.py``) and the tables
(``stats.py``) without either importing the other."""

from __future__ import annotations

# DiffGradCAM variant -> the base it is compared with (paper Table 3)
SIMILARITY_PAIRS: dict[str, str] = {
    **{f"{k}diffgradcam": "gradcam" for k in ("mean", "max", "lse")},
    **{f"{k}diffgradcam++": "gradcam++" for k in ("mean", "max", "lse")},
}

"""Faithfulness, randomisation, localisation, complexity and robustness metrics for any CAMs.

Every function takes maps ``[B, h, w]`` from anywhere (this engine, pytorch-grad-cam,
torchcam, a user's file), the model, its input ``x [B, C, H, W]`` and the explained
classes, and returns one value per sample on ``x``'s device. Perturbed inputs run in
batched no-grad forwards (``batch_size`` at a time) with the model in eval mode (every
submodule's flag restored after), so the scores do not depend on ``batch_size`` and no
BatchNorm statistic moves. Each equals its anchor's implementation on the same model,
maps and input (tests). The families follow Quantus's grouping, one module each;
:mod:`.registry` names them for callers (:data:`METRICS`, :func:`evaluate`). The jobs they
share exist once: scoring inputs in chunks (:func:`~.common.scores_of_rows`), removing
features (:mod:`.removal`), re-explaining (:mod:`.reexplain`), correlating rows
(:mod:`.correlation`).
"""

from ..modes import eval_mode
from .common import (
    PROGRESS_AFTER,
    SCORES,
    Baseline,
    ScoreFn,
    class_scores,
    finite_rows,
    metric,
    to_input_size,
)
from .complexity import complexity, sparseness
from .correlation import spearman
from .faithfulness import (
    ARCC_PERCENTILES,
    DEFAULT_PERCENTILES,
    arcc,
    confidence,
    deletion_insertion,
    road,
)
from .faithfulness_correlation import faithfulness_correlation, monotonicity_correlation
from .faithfulness_order import irof, pixel_flipping, region_perturbation, slic_segments
from .localisation import relevance_mass, relevance_rank
from .randomisation import (
    efficient_mprt,
    histogram_entropy,
    random_logit,
    random_other_classes,
    randomised_copy,
    smooth_mprt,
    ssim_rows,
)
from .registry import (
    GROUPS,
    MASK_METRICS,
    METRICS,
    Explainer,
    MetricSpec,
    accepted_options,
    check_metrics,
    check_options,
    evaluate,
    explainer,
    register_group,
)
from .robustness import local_lipschitz_estimate, max_sensitivity
from .sanity import (
    SANITY_MODES,
    SanityResult,
    parameter_layers,
    randomization_check,
)
from .solvers import IMPUTE_SOLVERS, ROAD_KERNEL, neighbour_sum, noisy_linear_impute

__all__ = [
    "ARCC_PERCENTILES",
    "DEFAULT_PERCENTILES",
    "GROUPS",
    "IMPUTE_SOLVERS",
    "MASK_METRICS",
    "METRICS",
    "PROGRESS_AFTER",
    "ROAD_KERNEL",
    "SANITY_MODES",
    "SCORES",
    "Baseline",
    "Explainer",
    "MetricSpec",
    "SanityResult",
    "ScoreFn",
    "accepted_options",
    "arcc",
    "check_metrics",
    "check_options",
    "class_scores",
    "complexity",
    "confidence",
    "deletion_insertion",
    "efficient_mprt",
    "eval_mode",
    "evaluate",
    "explainer",
    "faithfulness_correlation",
    "finite_rows",
    "histogram_entropy",
    "irof",
    "local_lipschitz_estimate",
    "max_sensitivity",
    "metric",
    "monotonicity_correlation",
    "neighbour_sum",
    "noisy_linear_impute",
    "parameter_layers",
    "pixel_flipping",
    "random_logit",
    "random_other_classes",
    "randomised_copy",
    "randomization_check",
    "region_perturbation",
    "register_group",
    "relevance_mass",
    "relevance_rank",
    "road",
    "slic_segments",
    "smooth_mprt",
    "sparseness",
    "spearman",
    "ssim_rows",
    "to_input_size",
]

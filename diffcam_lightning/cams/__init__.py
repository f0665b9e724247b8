"""The CAM engine: target layers, backprop targets, methods and post-processing."""

from .engine import CAMEngine, CAMResult
from .layers import KNOWN_LAYERS, resolve_layer
from .methods import (
    ALL_METHODS,
    DIFF_BASES,
    DIFF_FAMILY_METHODS,
    GRADIENT_METHODS,
    METHODS,
    PAPER_METHODS,
    CAMContext,
    CAMMethod,
    compose_target,
    get_method,
    guided_backprop,
    guided_gradcam,
    legrad,
    method_names,
    methods_table,
    refinecam,
    register_method,
    weighted_sum,
)
from .postprocess import minmax_normalize
from .targets import BACKPROP_TARGETS, TARGET_VALUES, beta, finer_weighted_target, register_target

__all__ = [
    "ALL_METHODS",
    "BACKPROP_TARGETS",
    "DIFF_BASES",
    "DIFF_FAMILY_METHODS",
    "GRADIENT_METHODS",
    "KNOWN_LAYERS",
    "METHODS",
    "PAPER_METHODS",
    "TARGET_VALUES",
    "CAMContext",
    "CAMEngine",
    "CAMMethod",
    "CAMResult",
    "beta",
    "compose_target",
    "finer_weighted_target",
    "get_method",
    "guided_backprop",
    "guided_gradcam",
    "legrad",
    "method_names",
    "methods_table",
    "minmax_normalize",
    "refinecam",
    "register_method",
    "register_target",
    "resolve_layer",
    "weighted_sum",
]

"""The CAM methods: small functions by family, in one registry.

Families (one module each): :mod:`.channel` (weightings of ``A`` and the one VJP's
``dT/dA``, and the gradient-free weightings), :mod:`.eigen` (principal components),
:mod:`.perturbation` (ScoreCAM, AblationCAM: the model run again), :mod:`.second_order`
(ShapleyCAM's Hessian term, FullGrad's bias gradients), :mod:`.legrad` (LeGrad for ViTs),
:mod:`.multilayer` (RefineCAM), :mod:`.guided` (guided backprop and Guided GradCAM: images,
so functions rather than registry entries). :mod:`.registry` holds the registry and the
context every method reads; :mod:`.catalogue` registers the names. This module only
re-exports them.
"""

from .catalogue import (
    ALL_METHODS,
    DIFF_BASES,
    DIFF_FAMILY_METHODS,
    DIFF_TARGETS,
    GRADIENT_FREE,
    GRADIENT_METHODS,
    GRADIENT_WEIGHTINGS,
    METHODS,
    MULTI_PASS,
    PAPER_METHODS,
    TARGET_PREFIXES,
    compose_target,
    methods_table,
)
from .channel import (
    cam,
    channel_cam,
    fem,
    gradcam_elementwise,
    gradcam_plusplus_weights,
    gradcam_weights,
    hirescam,
    layercam,
    randomcam,
    xgradcam_weights,
)
from .eigen import eigencam, eigengradcam, first_component, kernel_component, kpcacam, salient_sign
from .guided import guided_backprop, guided_gradcam
from .legrad import legrad
from .multilayer import refinecam
from .perturbation import ablationcam, iscam, scorecam, smoothgradcampp, sscam
from .registry import (
    HEAD_GRAPH,
    METHOD_REGISTRY,
    MODEL_PASSES,
    PASSES,
    CAMContext,
    CAMMethod,
    MapFunction,
    available_methods,
    get_method,
    method_names,
    register_method,
    weighted_sum,
)
from .second_order import bias_layers, fullgrad, hessian_times_activations, shapleycam

__all__ = [
    "ALL_METHODS",
    "DIFF_BASES",
    "DIFF_FAMILY_METHODS",
    "DIFF_TARGETS",
    "GRADIENT_FREE",
    "GRADIENT_METHODS",
    "GRADIENT_WEIGHTINGS",
    "HEAD_GRAPH",
    "METHODS",
    "METHOD_REGISTRY",
    "MODEL_PASSES",
    "MULTI_PASS",
    "PAPER_METHODS",
    "PASSES",
    "TARGET_PREFIXES",
    "CAMContext",
    "CAMMethod",
    "MapFunction",
    "ablationcam",
    "available_methods",
    "bias_layers",
    "cam",
    "channel_cam",
    "compose_target",
    "eigencam",
    "eigengradcam",
    "fem",
    "first_component",
    "fullgrad",
    "get_method",
    "gradcam_elementwise",
    "gradcam_plusplus_weights",
    "gradcam_weights",
    "guided_backprop",
    "guided_gradcam",
    "hessian_times_activations",
    "hirescam",
    "iscam",
    "kernel_component",
    "kpcacam",
    "layercam",
    "legrad",
    "method_names",
    "methods_table",
    "randomcam",
    "refinecam",
    "register_method",
    "salient_sign",
    "scorecam",
    "shapleycam",
    "smoothgradcampp",
    "sscam",
    "weighted_sum",
    "xgradcam_weights",
]

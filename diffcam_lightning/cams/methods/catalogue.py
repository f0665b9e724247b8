"""The registration tables: which weighting x backprop target each method name is.

A method that backpropagates a target is a weighting x a backprop target: every weighting
is registered with the class logit ``y_c`` (its plain name), with each DiffGradCAM
difference ``y_c - beta(others)`` (``{mean,max,lse}diff<name>``) and with each other
target of :data:`TARGET_PREFIXES` (``rest<name>``, ``finer<name>``, ``softmax<name>``);
:func:`compose_target` does the same for a target a user registers. The method functions
live in their family's module; this one only names and registers them.
"""

from __future__ import annotations

from typing import Optional

from ..targets import BACKPROP_TARGETS
from . import channel
from .eigen import eigencam, eigengradcam, kpcacam
from .legrad import legrad_map
from .perturbation import ablationcam, iscam, scorecam, smoothgradcampp, sscam
from .registry import HEAD_GRAPH, METHOD_REGISTRY, MODEL_PASSES, MapFunction, available_methods, register_method
from .second_order import fullgrad, shapleycam

# The gradient family: weighting x backprop target (the weighting does not know its target).
GRADIENT_WEIGHTINGS: dict[str, MapFunction] = {
    "gradcam": channel.channel_cam(channel.gradcam_weights),
    "gradcam++": channel.channel_cam(channel.gradcam_plusplus_weights),
    "hirescam": channel.hirescam,
    "xgradcam": channel.channel_cam(channel.xgradcam_weights),
    "layercam": channel.layercam,
    "gradcamelementwise": channel.gradcam_elementwise,
    "eigengradcam": eigengradcam,
}
DIFF_TARGETS: dict[str, str] = {"meandiff": "mean", "maxdiff": "max", "lsediff": "lse"}
"""Method-name prefix -> DiffGradCAM backprop target."""
TARGET_PREFIXES: dict[str, str] = {**DIFF_TARGETS, "rest": "rest", "finer": "finer", "softmax": "softmax"}
"""Method-name prefix -> backprop target, for every target besides ``y_c``."""
GRADIENT_FREE: dict[str, MapFunction] = {"eigencam": eigencam, "scorecam": scorecam, "ablationcam": ablationcam}
# Methods with a target but more than the one VJP: name -> (map, extra passes).
MULTI_PASS: dict[str, tuple[MapFunction, tuple[str, ...]]] = {
    "shapleycam": (shapleycam, (HEAD_GRAPH,)),
    "fullgrad": (fullgrad, (MODEL_PASSES,)),
    "smoothgradcam++": (smoothgradcampp, (MODEL_PASSES,)),
    "legrad": (legrad_map, (MODEL_PASSES,)),
}

# Registration order: the paper's twelve first (their order in METHODS is relied on), then
# the rest of the 31 methods before this package, then the additions.
_PAPER_ORDER = ("gradcam", "gradcam++", "hirescam", "xgradcam", "eigencam", "scorecam")
for _name in _PAPER_ORDER:
    if _name in GRADIENT_WEIGHTINGS:
        register_method(_name, backprop="logit")(GRADIENT_WEIGHTINGS[_name])
    else:
        register_method(_name)(GRADIENT_FREE[_name])
for _family in ("gradcam", "gradcam++"):
    for _prefix, _target in DIFF_TARGETS.items():
        register_method(f"{_prefix}{_family}", backprop=_target)(GRADIENT_WEIGHTINGS[_family])
for _family, _fn in GRADIENT_WEIGHTINGS.items():
    if _family not in _PAPER_ORDER:
        register_method(_family, backprop="logit")(_fn)
register_method("ablationcam")(ablationcam)
for _family, _fn in GRADIENT_WEIGHTINGS.items():
    if _family not in ("gradcam", "gradcam++"):
        for _prefix, _target in DIFF_TARGETS.items():
            register_method(f"{_prefix}{_family}", backprop=_target)(_fn)
# additions: the other targets for every weighting, then the new methods
for _prefix, _target in TARGET_PREFIXES.items():
    if _prefix not in DIFF_TARGETS:
        for _family, _fn in GRADIENT_WEIGHTINGS.items():
            register_method(f"{_prefix}{_family}", backprop=_target)(_fn)
register_method("finercam", backprop="finer")(GRADIENT_WEIGHTINGS["gradcam"])  # pytorch-grad-cam's FinerCAM
for _name, _fn in {
    "kpcacam": kpcacam,
    "fem": channel.fem,
    "randomcam": channel.randomcam,
    "cam": channel.cam,
    "sscam": sscam,
    "iscam": iscam,
}.items():
    register_method(_name)(_fn)
for _name, (_fn, _passes) in MULTI_PASS.items():
    register_method(_name, backprop="logit", passes=_passes)(_fn)
    for _prefix, _target in TARGET_PREFIXES.items():
        register_method(f"{_prefix}{_name}", backprop=_target, passes=_passes)(_fn)


def compose_target(target: str, prefix: Optional[str] = None) -> tuple[str, ...]:
    """Register every gradient weighting (and multi-pass method) with the backprop target
    ``target`` (registered with ``register_target``) as ``<prefix><name>``; returns the names."""
    if target not in BACKPROP_TARGETS:
        raise ValueError(f"Unknown backprop target {target!r}; registered: {', '.join(BACKPROP_TARGETS)}.")
    prefix = target if prefix is None else prefix
    names = []
    for family, fn in GRADIENT_WEIGHTINGS.items():
        register_method(f"{prefix}{family}", backprop=target)(fn)
        names.append(f"{prefix}{family}")
    for family, (fn, passes) in MULTI_PASS.items():
        register_method(f"{prefix}{family}", backprop=target, passes=passes)(fn)
        names.append(f"{prefix}{family}")
    return tuple(names)


_TARGETED = (*GRADIENT_WEIGHTINGS, *MULTI_PASS)
DIFF_BASES: dict[str, str] = {f"{p}{f}": f for f in _TARGETED for p in DIFF_TARGETS}
"""Each DiffGradCAM-style variant -> the method with the same weighting on ``y_c``."""

ALL_METHODS: tuple[str, ...] = available_methods()
"""Every registered name."""
_OPT_IN = ("sscam", "iscam", *(m for m in ALL_METHODS if METHOD_REGISTRY[m].compute is legrad_map))
METHODS: tuple[str, ...] = tuple(m for m in ALL_METHODS if m not in _OPT_IN)
"""The methods that run on any model with a feature-map or token layer: all but SSCAM and
ISCAM (``num_samples`` x ScoreCAM's forwards) and LeGrad (torchvision ViTs), which are
asked for by name (``ALL_METHODS``)."""
GRADIENT_METHODS: tuple[str, ...] = tuple(
    m for m in METHODS if METHOD_REGISTRY[m].backprop is not None and not METHOD_REGISTRY[m].passes
)
"""The methods made of the one forward + one batched VJP (differentiable: trainable)."""
DIFF_FAMILY_METHODS: tuple[str, ...] = tuple(
    f"{prefix}{weighting}" for weighting in GRADIENT_WEIGHTINGS for prefix in ("", *DIFF_TARGETS)
)
"""The 28 gradient CAMs of the paper's families: each weighting with ``y_c`` and the three
DiffGradCAM targets (what the benchmarks compare with pytorch-grad-cam as "the 28")."""
PAPER_METHODS: tuple[str, ...] = METHODS[:12]


def methods_table() -> str:
    """The gradient family as a Markdown table: weighting (rows) x backprop target (columns)."""
    head = (
        "| weighting | y_c | y_c - mean(others) | y_c - max(others) | y_c - lse(others) | ReST | FinerWeighted | p_c |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    rows = [f"| {f} | `{f}` | " + " | ".join(f"`{p}{f}`" for p in TARGET_PREFIXES) + " |" for f in _TARGETED]
    return head + "\n".join(rows) + "\n"

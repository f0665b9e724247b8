"""The CAM methods: small pure functions registered by name.

A method maps a :class:`CAMContext` (activations ``A [B, K, h, w]``, the gradient of its
backprop target ``g``, and for ScoreCAM (``scorecam.py``) the model and input) to a raw map ``[B, h, w]``.
The engine applies ReLU, resizing and normalisation afterwards, identically for all.
Lookup is case-insensitive: ``get_method("MeanDiffGradCAM++")`` works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .context import CAMContext, MapFunction, weighted_sum  # re-exported: shared with scorecam.py
from .outputs import _logits  # re-exported: the logits of any model output live in outputs.py
from .scorecam import scorecam


@dataclass(frozen=True)
class CAMMethod:
    """A registered method. ``backprop`` names its target in ``BACKPROP_TARGETS``
    (``None`` for gradient-free methods)."""

    name: str
    compute: MapFunction
    backprop: Optional[str] = None


_REGISTRY: dict[str, CAMMethod] = {}


def register_method(name: str, backprop: Optional[str] = None) -> Callable[[MapFunction], MapFunction]:
    """Register ``fn(ctx) -> raw map [B, h, w]`` under ``name`` (stored lower case)."""

    def decorator(fn: MapFunction) -> MapFunction:
        key = name.lower()
        if key in _REGISTRY:
            raise ValueError(f"CAM method {name!r} is already registered.")
        _REGISTRY[key] = CAMMethod(key, fn, backprop)
        return fn

    return decorator


def available_methods() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_method(name: str) -> CAMMethod:
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError(f"Unknown CAM method {name!r}. Valid methods: {', '.join(_REGISTRY)}.")
    return _REGISTRY[key]


# ---------------------------------------------------------------- channel weightings


def gradcam_weights(activations: Tensor, grad: Tensor) -> Tensor:
    """GradCAM (paper eq. 2): spatial mean of the gradient."""
    return grad.mean(dim=(2, 3))


def gradcam_plusplus_weights(activations: Tensor, grad: Tensor) -> Tensor:
    """GradCAM++ (Chattopadhyay et al., eq. 19) with exponential-free closed form."""
    grad2 = grad.pow(2)
    grad3 = grad2 * grad
    sum_activations = activations.sum(dim=(2, 3), keepdim=True)
    alpha = grad2 / (2 * grad2 + sum_activations * grad3 + 1e-6)
    alpha = torch.where(grad != 0, alpha, torch.zeros_like(alpha))
    return (alpha * grad.clamp(min=0)).sum(dim=(2, 3))


def xgradcam_weights(activations: Tensor, grad: Tensor) -> Tensor:
    """XGradCAM: activation-weighted gradient, normalised by the channel's mass."""
    sum_activations = activations.sum(dim=(2, 3), keepdim=True)
    return (grad * activations / (sum_activations + 1e-7)).sum(dim=(2, 3))


def _channel_cam(weighting: Callable[[Tensor, Tensor], Tensor]) -> MapFunction:
    def compute(ctx: CAMContext) -> Tensor:
        return weighted_sum(weighting(ctx.activations, ctx.grad), ctx.activations)

    compute.__doc__ = weighting.__doc__
    return compute


def hirescam(ctx: CAMContext) -> Tensor:
    """HiResCAM: element-wise gradient x activation, summed over channels."""
    return (ctx.grad * ctx.activations).sum(dim=1)


def layercam(ctx: CAMContext) -> Tensor:
    """LayerCAM (Jiang et al. 2021): activations weighted by the positive part of the
    gradient at each position, summed over channels."""
    return (ctx.grad.clamp(min=0) * ctx.activations).sum(dim=1)


def gradcam_elementwise(ctx: CAMContext) -> Tensor:
    """GradCAMElementWise (pytorch-grad-cam): ReLU of gradient x activation before the
    channel sum, so negative evidence in one channel cannot cancel another's."""
    return (ctx.grad * ctx.activations).clamp(min=0).sum(dim=1)


def eigengradcam(ctx: CAMContext) -> Tensor:
    """EigenGradCAM: first principal component of gradient x activation (class-aware
    EigenCAM; sign as :func:`first_component`)."""
    return first_component(ctx.grad * ctx.activations)


def eigencam(ctx: CAMContext) -> Tensor:
    """EigenCAM: projection of the spatially centred activations on their first
    principal component (per sample; sign as :func:`first_component`)."""
    return first_component(ctx.activations)


def first_component(features: Tensor) -> Tensor:
    """Per sample, the ``[h*w, K]`` features centred over space and projected on their
    first principal component: ``[B, h, w]``.

    The component is the top eigenvector of the smaller Gram matrix (``h*w x h*w`` when
    ``h*w < K``, as on every CNN's last layer, else ``K x K``), not a full SVD: on CPU by
    ``eigh``; elsewhere by repeated squaring (matrix products only, so no host-device
    synchronisation in the gradient path). Its sign puts the largest magnitude on the
    positive side (:func:`salient_sign`), whatever the solver.
    """
    # float64 for a stable eigenvector where the device has it (MPS does not)
    precise = torch.float32 if features.device.type == "mps" else torch.float64
    acts = features.to(precise)
    acts = torch.where(torch.isfinite(acts), acts, torch.zeros((), dtype=precise, device=acts.device))
    b, k, h, w = acts.shape
    flat = acts.reshape(b, k, h * w).transpose(1, 2)  # [B, hw, K]
    flat = flat - flat.mean(dim=1, keepdim=True)
    wide = h * w < k
    gram = flat @ flat.transpose(1, 2) if wide else flat.transpose(1, 2) @ flat  # [B, n, n], n = min(hw, K)
    top = _top_eigenvector(gram)  # [B, n]
    if wide:  # top is the left singular vector u; the right one is X^T u / |X^T u|
        right = flat.transpose(1, 2) @ top.unsqueeze(-1)
        right = right / right.norm(dim=1, keepdim=True).clamp_min(torch.finfo(precise).tiny)
    else:
        right = top.unsqueeze(-1)
    projection = (flat @ right).squeeze(-1)  # [B, hw]
    projection = projection * salient_sign(projection).unsqueeze(-1)
    # an image with non-finite activations gets a NaN map, not zeros
    broken = ~torch.isfinite(features).flatten(1).all(dim=1)
    projection = projection.masked_fill(broken.view(b, 1), float("nan"))
    return projection.reshape(b, h, w).float()


def _top_eigenvector(gram: Tensor) -> Tensor:
    """Unit eigenvector of the largest eigenvalue of each symmetric PSD ``[B, n, n]``, sign
    arbitrary: ``eigh`` on CPU; elsewhere :func:`top_eigenvector_by_squaring`, because
    ``eigh`` on CUDA reads its error flags back to the host (a synchronisation)."""
    if gram.device.type == "cpu":
        return torch.linalg.eigh(gram).eigenvectors[..., -1]
    return top_eigenvector_by_squaring(gram)


def top_eigenvector_by_squaring(gram: Tensor, squarings: int = 16) -> Tensor:
    """The top eigenvector by matrix products alone: ``gram^(2^squarings)`` (normalised by its
    trace at each step) is the projector on it unless the two largest eigenvalues are within
    a relative ~1e-5 of each other (power 65536); its largest column, refined by two power
    steps on ``gram``, is the vector."""
    tiny = torch.finfo(gram.dtype).tiny
    power = gram
    for _ in range(squarings):
        power = power @ power
        power = power / power.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(tiny)[:, None, None]
    column = power.diagonal(dim1=1, dim2=2).argmax(dim=1)  # the largest column of a rank-1 projector
    vector = power.gather(2, column[:, None, None].expand(-1, power.shape[1], 1))
    for _ in range(2):
        vector = vector / vector.norm(dim=1, keepdim=True).clamp_min(tiny)
        vector = gram @ vector
    return (vector / vector.norm(dim=1, keepdim=True).clamp_min(tiny)).squeeze(-1)


def salient_sign(projection: Tensor) -> Tensor:
    """``+1`` or ``-1`` per sample ``[B, hw]``: the sign that makes the projection's largest
    magnitude positive (flip when ``|min| > |max|``; a tie keeps the sign).

    A principal component's sign is arbitrary, and the SVD's choice is an accident of the
    solver: numpy's LAPACK (what pytorch-grad-cam's ``EigenCAM`` calls), torch's MKL and the
    CUDA path here disagree image by image (on random-weight ViTs at 224 px about half the
    images; no rule on the data reproduces LAPACK's choice, which comes out of its
    iterations). This is the sign correction pytorch-grad-cam itself ships
    (``get_2d_projection_with_sign_correction``, Seg-Eigen-CAM eq. 13), so the maps equal
    that function's exactly on every device and solver, and the salient side survives the ReLU.
    """
    flip = projection.amin(dim=1).abs() > projection.amax(dim=1).abs()
    return 1.0 - 2.0 * flip.to(projection.dtype)


def ablationcam(ctx: CAMContext) -> Tensor:
    """AblationCAM (Desai & Ramaswamy 2020): the weight of channel k is the relative drop
    of the target logit when channel k of the target layer's output is set to zero,
    ``(y_c - y_c^k) / y_c``. All (image, channel) ablations run as batched no-grad
    forwards; the target layer's output is replaced by a forward hook (as pytorch-grad-cam,
    which zeroes a channel when the layer's minimum is 0; for layers with negative outputs
    it substitutes ``min - 1e7`` instead, a choice this implementation does not copy)."""
    if ctx.model is None or ctx.inputs is None or ctx.targets is None or ctx.layer is None:
        raise ValueError("ablationcam needs the model, its target layer, the input and the targets in its context.")
    acts = ctx.activations.detach()
    b, k = acts.shape[:2]
    inputs = ctx.inputs.detach()
    rows = torch.arange(b * k, device=acts.device)
    owner, channel = rows // k, rows % k
    step = max(1, int(ctx.scorecam_batch_size))
    chunk: dict[str, Tensor] = {}

    channel_dim = 1 if ctx.layout is None else ctx.layout.channel_dim
    if channel_dim is None:
        raise ValueError("ablationcam needs a named layout ('nchw', 'nhwc' or 'tokens'), not a layout callable.")
    raw = (ctx.raw_activations if ctx.raw_activations is not None else acts).detach()

    def ablate(module: nn.Module, args, output: Tensor) -> Tensor:
        ablated = raw[chunk["owner"]].to(output.dtype).clone().movedim(channel_dim, 1)
        ablated[torch.arange(len(ablated), device=acts.device), chunk["channel"]] = 0
        return ablated.movedim(1, channel_dim)

    scores = []
    with torch.no_grad():
        original = _logits(ctx.model(inputs)).gather(1, ctx.targets[:, None]).float().squeeze(1)
    handle = ctx.layer.register_forward_hook(ablate)
    try:
        with torch.no_grad():
            for start in range(0, b * k, step):
                chunk["owner"], chunk["channel"] = owner[start : start + step], channel[start : start + step]
                logits = _logits(ctx.model(inputs[chunk["owner"]]))
                scores.append(logits.gather(1, ctx.targets[chunk["owner"], None]).float().squeeze(1))
    finally:
        handle.remove()
    ablated = torch.cat(scores).reshape(b, k)
    base = original[:, None]
    weights = (base - ablated) / torch.where(base.abs() > 1e-12, base, torch.full_like(base, 1e-12))
    return weighted_sum(weights, acts)


# ---------------------------------------------------------------- registry

# The gradient family: weighting x backprop target. Every weighting is registered once
# with the class logit y_c (its plain name) and once with each DiffGradCAM difference
# Delta_c = y_c - beta(others) (``{mean,max,lse}diff<name>``: the paper's meandiffgradcam,
# and so on); the target is independent of the weighting.
GRADIENT_WEIGHTINGS: dict[str, MapFunction] = {
    "gradcam": _channel_cam(gradcam_weights),
    "gradcam++": _channel_cam(gradcam_plusplus_weights),
    "hirescam": hirescam,
    "xgradcam": _channel_cam(xgradcam_weights),
    "layercam": layercam,
    "gradcamelementwise": gradcam_elementwise,
    "eigengradcam": eigengradcam,
}
DIFF_TARGETS: dict[str, str] = {"meandiff": "mean", "maxdiff": "max", "lsediff": "lse"}

GRADIENT_FREE: dict[str, MapFunction] = {"eigencam": eigencam, "scorecam": scorecam, "ablationcam": ablationcam}

# Registration order: the paper's twelve first (their order in METHODS is relied on), then the rest.
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

DIFF_BASES: dict[str, str] = {f"{p}{f}": f for f in GRADIENT_WEIGHTINGS for p in DIFF_TARGETS}
"""Each DiffGradCAM-style variant -> the method with the same weighting on ``y_c``."""

METHODS: tuple[str, ...] = available_methods()
GRADIENT_METHODS: tuple[str, ...] = tuple(m for m in METHODS if _REGISTRY[m].backprop is not None)
PAPER_METHODS: tuple[str, ...] = METHODS[:12]


def methods_table() -> str:
    """The gradient family as a Markdown table: weighting (rows) x backprop target (columns)."""
    head = "| weighting | y_c | y_c - mean(others) | y_c - max(others) | y_c - lse(others) |\n|---|---|---|---|---|\n"
    rows = [f"| {f} | `{f}` | " + " | ".join(f"`{p}{f}`" for p in DIFF_TARGETS) + " |" for f in GRADIENT_WEIGHTINGS]
    return head + "\n".join(rows) + "\n"

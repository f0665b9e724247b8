"""The one method registry: what a method reads (:class:`CAMContext`) and how it is found.

A method maps a :class:`CAMContext` (activations ``A [B, K, h, w]``, the gradient of its
backprop target ``g``, the model and input for the methods that run it again) to a raw map
``[B, h, w]``. The engine applies ReLU, resizing and normalisation afterwards, identically
for all. Lookup is case-insensitive: ``get_method("MeanDiffGradCAM++")`` works.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, TypeVar, Union

import torch
from torch import Tensor, nn

from ...registry import Registry, UnknownNameError

if TYPE_CHECKING:
    from ..layouts import Layout

T = TypeVar("T")

# Extra passes a method may need beyond the one forward + one batched VJP. The engine keeps
# what they need for the call; a method with any of them cannot be trained through.
HEAD_GRAPH = "head_graph"  # the logits' graph back to A (second-order terms: ShapleyCAM)
MODEL_PASSES = "model_passes"  # its own forwards/backwards of the whole model (FullGrad, guided backprop)
PASSES = (HEAD_GRAPH, MODEL_PASSES)


@dataclass
class CAMContext:
    """Everything a method may read: what the engine computed once for all the call's methods.

    A method is ``fn(ctx) -> raw map [B, h, w]``; it reads the fields it needs and checks
    the optional ones with :func:`require` / :func:`present` (refusing a context built
    without them instead of guessing).

    Attributes:
        activations: ``A [B, K, h, w]``, the target layer's output in NCHW.
        gradients: backprop target name -> ``dT/dA [B, K, h, w]``, one per target of the call.
        backprop: the target of the method now running (``None``: gradient-free); see :attr:`grad`.
        model, inputs, targets, logits: the model (a ``LogitsView`` when ``output_key`` is
            set), the input batch, the explained classes ``[B]`` and the call's logits.
        perturbation_batch_size: inputs per extra forward (ScoreCAM, AblationCAM).
        layer, layout, raw_activations: the target module, its output's layout and that
            output before the NCHW conversion (AblationCAM ablates in the layer's own layout).
        head: ``(logits, raw A)`` with the head's graph kept, for ``HEAD_GRAPH`` methods.
        seed: the stochastic methods' seed.
        cache: passes shared by the methods of one call; methods: the call's methods.

    Example:
        >>> import torch
        >>> from diffcam_lightning.cams import get_method
        >>> from diffcam_lightning.cams.methods import CAMContext
        >>> ctx = CAMContext(torch.ones(1, 2, 3, 3), {"logit": torch.ones(1, 2, 3, 3)}, backprop="logit")
        >>> get_method("gradcam").compute(ctx)[0, 0].tolist()  # sum_k mean(dy/dA_k) A_k
        [2.0, 2.0, 2.0]
    """

    activations: Tensor
    gradients: dict[str, Tensor] = field(default_factory=dict)
    model: Optional[nn.Module] = None
    inputs: Optional[Tensor] = None
    targets: Optional[Tensor] = None
    perturbation_batch_size: int = 32  # inputs per extra forward (ScoreCAM's masks, AblationCAM's ablations)
    backprop: Optional[str] = None
    layer: Optional[nn.Module] = None  # the target layer (AblationCAM replaces its output)
    layout: Optional[Layout] = None  # the layer's resolved Layout (AblationCAM ablates in the layer's own layout)
    raw_activations: Optional[Tensor] = None  # the layer's output before the layout conversion
    logits: Optional[Tensor] = None  # the call's logits [B, C] (detached)
    head: Optional[tuple[Tensor, Tensor]] = None  # (logits, raw A) with the head's graph, for HEAD_GRAPH methods
    seed: int = 0  # the stochastic methods' seed (RandomCAM, SSCAM, ISCAM, SmoothGradCAM++)
    cache: dict[str, Any] = field(default_factory=dict)  # passes shared by the methods of one call
    methods: tuple[CAMMethod, ...] = ()  # the call's methods (a shared pass serves all their targets)

    @property
    def scorecam_batch_size(self) -> int:
        """The old name of ``perturbation_batch_size``."""
        return self.perturbation_batch_size

    @property
    def grad(self) -> Tensor:
        """The gradient of the current method's backprop target."""
        if self.backprop is None:
            raise KeyError("CAMContext.grad: the current method has no backprop target (it is gradient-free).")
        return self.gradients[self.backprop]


MapFunction = Callable[[CAMContext], Tensor]


@dataclass(frozen=True)
class CAMMethod:
    """A registered method, as :func:`get_method` returns it.

    Attributes:
        name: the canonical (lower-case) name.
        compute: ``fn(CAMContext) -> raw map [B, h, w]``.
        backprop: its target in ``BACKPROP_TARGETS`` (``None`` for gradient-free methods).
        passes: the extra passes it needs (names of ``PASSES``).

    Example:
        >>> from diffcam_lightning.cams import get_method
        >>> method = get_method("MeanDiffGradCAM++")
        >>> method.name, method.backprop, method.passes
        ('meandiffgradcam++', 'mean', ())
    """

    name: str
    compute: MapFunction
    backprop: Optional[str] = None
    passes: tuple[str, ...] = ()


METHOD_REGISTRY: Registry[str, CAMMethod] = Registry("CAM method", normalise=str.lower)
"""Every registered method by lower-case name (read-only; add with :func:`register_method`)."""


def register_method(
    name: str, backprop: Optional[str] = None, passes: tuple[str, ...] = (), *, replace: bool = False
) -> Callable[[MapFunction], MapFunction]:
    """Register ``fn(ctx) -> raw map [B, h, w]`` under ``name`` (stored lower case).

    ``backprop`` names the backprop target whose ``dT/dA`` the method reads (``None``:
    gradient-free); ``passes`` the extra passes it needs (:data:`PASSES`). A taken name is
    refused unless ``replace=True``.

    Raises:
        ValueError: an unknown pass, or a name already registered.

    Example:
        >>> from diffcam_lightning.cams import register_method, weighted_sum
        >>> @register_method("absgradcam_example", backprop="logit")
        ... def absgradcam(ctx):
        ...     return weighted_sum(ctx.grad.abs().mean(dim=(2, 3)), ctx.activations)
        >>> from diffcam_lightning.cams import get_method
        >>> get_method("AbsGradCAM_Example").backprop
        'logit'
        >>> _ = METHOD_REGISTRY.unregister("absgradcam_example")
    """
    unknown = [p for p in passes if p not in PASSES]
    if unknown:
        raise ValueError(f"Unknown passes {unknown} for CAM method {name!r}; valid: {', '.join(PASSES)}.")

    def decorator(fn: MapFunction) -> MapFunction:
        key = METHOD_REGISTRY.key(name)
        METHOD_REGISTRY.register(key, CAMMethod(key, fn, backprop, tuple(passes)), replace=replace)
        return fn

    return decorator


def available_methods() -> tuple[str, ...]:
    """Every registered method name, in registration order."""
    return METHOD_REGISTRY.names()


def get_method(name: str) -> CAMMethod:
    """The method registered as ``name`` (any case).

    Raises:
        UnknownNameError: (a ValueError) naming the valid methods.
    """
    if str(name) not in METHOD_REGISTRY:  # raised outside an except: the CLI prints this message
        raise UnknownNameError(f"Unknown CAM method {name!r}. Valid methods: {', '.join(METHOD_REGISTRY)}.")
    return METHOD_REGISTRY[str(name)]


def method_names(
    methods: Union[str, Iterable[str]], among: Optional[Sequence[str]] = None, option: str = "methods"
) -> tuple[str, ...]:
    """The one normalisation of a user's method choice: a name or names -> registered
    names (lower case), duplicates dropped in order; an empty choice, an unknown name or
    one outside ``among`` is an error naming ``option`` and the valid names."""
    names = [methods] if isinstance(methods, str) else list(methods)
    valid = ", ".join(among if among is not None else METHOD_REGISTRY)
    if not names:
        raise ValueError(f"{option} is empty; give one or more of: {valid}.")
    chosen = tuple(dict.fromkeys(get_method(name).name for name in names))
    outside = [name for name in chosen if among is not None and name not in among]
    if outside:
        raise ValueError(f"{option}: {', '.join(outside)} cannot be used here; valid: {valid}.")
    return chosen


def weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """``sum_k w_k A_k`` for weights ``[B, K]``."""
    return torch.einsum("bk,bkhw->bhw", weights, activations)


def require(ctx: CAMContext, method: str, *names: str) -> None:
    """Refuse a context that lacks what ``method`` reads (a method called outside the engine)."""
    missing = [n for n in names if getattr(ctx, n) is None]
    if missing:
        raise ValueError(f"{method} needs {', '.join(missing)} in its context; run it through CAMEngine.")


def present(value: Optional[T], method: str, name: str) -> T:
    """``value`` when it is in the context, typed as present; else the refusal of :func:`require`."""
    if value is None:
        raise ValueError(f"{method} needs {name} in its context; run it through CAMEngine.")
    return value

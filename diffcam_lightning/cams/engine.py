"""``CAMEngine``: every requested CAM from one forward pass and one batched VJP.

The target layer's output ``A`` is captured by a forward hook that lives only for the
call. All gradient methods share one ``torch.autograd.grad(logits, A, V,
is_grads_batched=True)`` where ``V [T, B, C]`` holds one row per distinct backprop
target (``y_c`` and the three DiffGradCAM differences). Gradients flow only from the
logits back to ``A``: never through the rest of the network, never into ``.grad``.
``A`` and its gradients are then turned into ``[B, K, h, w]`` by the layer's layout
(:mod:`.layouts`), once, before any method runs. Where a graph cannot be batched (a
``torch.compile``d model), the VJP falls back to one pass per target, with one warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .classes import TargetSpec, explained_classes
from .coupling import (
    COUPLING_POLICIES,
    BatchCoupling,
    CouplingProbe,
    check_policy,
    coupling_message,
    per_image_gradients,
    typed_modules,
)
from .layers import LayerSpec, resolve_layer, reused_layer_error, zero_gradient_error
from .layouts import Layout, LayoutHints, LayoutSpec, model_hints, resolve_layout
from .methods import HEAD_GRAPH, CAMContext, CAMMethod, get_method, method_names
from .modes import eval_mode, preserved_buffers, preserved_rng, unfused_attention
from .outputs import LogitsView, OutputKey, classifier_width, logits_of
from .postprocess import SizeSpec, postprocess, resolve_size
from .targets import BACKPROP_TARGETS


@dataclass
class CAMResult:
    """What :meth:`CAMEngine.compute` returns: the maps with what they explain.

    Attributes:
        maps: ``{method: Tensor[B, h, w]}``, float32, in ``[0, 1]`` when normalised.
        logits: the call's logits ``[B, C]`` (differentiable with ``create_graph=True``).
        targets: the class explained per image ``[B]`` (the predicted ones by default).
        layer: the target layer's dotted name.
        grid: the layer's spatial grid ``(h, w)`` (the maps' size when ``size=None``).
        layout: the layer output's layout, as text (e.g. ``"nchw"``).

    Example:
        >>> import torch, torchvision
        >>> from diffcam_lightning.cams import CAMEngine
        >>> model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
        >>> result = CAMEngine(model, "layer3").compute(torch.rand(2, 3, 64, 64), targets=[0, 3])
        >>> result.maps["gradcam"].shape, result.logits.shape, result.targets.tolist()
        (torch.Size([2, 4, 4]), torch.Size([2, 5]), [0, 3])
        >>> result.layer, result.grid, result.layout
        ('layer3', (4, 4), 'nchw')
    """

    maps: dict[str, Tensor]
    logits: Tensor
    targets: Tensor
    layer: str
    grid: tuple[int, int]
    layout: str = "nchw"


class CAMEngine:
    """Every requested CAM of ``model`` at one layer, from one forward and one batched VJP.

    Gradient methods share the VJP; gradient-free ones (ScoreCAM, AblationCAM) run their
    extra forwards in eval mode. A call leaves every submodule's train/eval flag, the
    parameters' ``.grad``, the model's hooks, BatchNorm statistics and the random generators
    as they were (unless ``create_graph``: a training forward), and works under
    ``torch.no_grad`` and ``torch.inference_mode`` (see docs/guarantees.md).

    Args:
        model: any classifier (``nn.Module``) returning logits ``[B, C]`` (or see ``output_key``).
        target_layer: the layer explained: a dotted name, the module, or ``None`` to pick one
            (``KNOWN_LAYERS``, else the last layer with a spatial output).
        perturbation_batch_size: how many masked (ScoreCAM) or ablated (AblationCAM) inputs
            one extra forward takes.
        batch_coupling: when a layer after the target mixes the batch (train-mode
            BatchNorm): ``"exact"`` takes one VJP row per image, ``"batched"`` one shared
            VJP; both warn once (see :mod:`.coupling`).
        layout: the layer output's layout: ``None`` (detected), ``"nchw"``, ``"nhwc"``,
            ``"tokens"``, ``"tokens:P"`` (P prefix tokens) or a callable ``A -> [B, K, h, w]``
            (see :mod:`.layouts`).
        output_key: where the logits are in the model's output when it is not a tensor, a
            tuple starting with them, a dict with ``"logits"`` or an object with ``.logits``.
        seed: the draws of the stochastic methods (RandomCAM, SSCAM, ISCAM, SmoothGradCAM++);
            the global generators are untouched.
        scorecam_batch_size: the old name of ``perturbation_batch_size`` (still accepted).

    Attributes:
        model: the model explained.
        target_layer: the target layer's dotted name (``None`` until an automatic search
            that needs a forward has run).
        layer: ``(dotted name, module)`` of the target layer, or ``None`` as above.
        last_layout: the :class:`~.layouts.Layout` of the latest call (``None`` before one).
        perturbation_batch_size: as given (``scorecam_batch_size`` reads the same value).
        batch_coupling: ``"exact"`` or ``"batched"``.
        layout: the ``layout`` option as given.
        output_key: as given.
        seed: as given.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: a batch size below 1, an unknown ``batch_coupling``, a ``target_layer``
            that is not in the model. A call raises ValueError for an unknown method, a bad
            input or targets, or a layer whose maps would be blank.

    Example:
        >>> import torch, torchvision
        >>> from diffcam_lightning.cams import CAMEngine
        >>> model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
        >>> engine = CAMEngine(model, "layer3")
        >>> x = torch.rand(2, 3, 64, 64)
        >>> maps = engine(x, methods=("gradcam", "meandiffgradcam"), size="input")
        >>> sorted(maps), maps["gradcam"].shape, maps["gradcam"].dtype
        (['gradcam', 'meandiffgradcam'], torch.Size([2, 64, 64]), torch.float32)
        >>> engine.target_layer, str(engine.last_layout), engine.batch_coupling
        ('layer3', 'nchw', 'exact')
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec = None,
        perturbation_batch_size: int = 32,
        batch_coupling: BatchCoupling = "exact",
        layout: LayoutSpec = None,
        output_key: OutputKey = None,
        seed: int = 0,
        *,
        scorecam_batch_size: Optional[int] = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module; got {type(model).__name__}.")
        self.model = model
        self.perturbation_batch_size = _batch_size(perturbation_batch_size, scorecam_batch_size)
        self.batch_coupling = check_policy(batch_coupling)
        self._coupling_warned = False
        self.layout = layout
        self.output_key = output_key
        self.seed = int(seed)
        self._width = classifier_width(model)
        self._hints: Optional[LayoutHints] = None
        self._warned_unbatched = False
        self.last_layout: Optional[Layout] = None  # the layout of the latest call
        self._checked_layers: set[str] = set()  # layers whose all-zero gradient check has run
        self._layer = _initial_layer(model, target_layer)

    @property
    def scorecam_batch_size(self) -> int:
        """The old name of :attr:`perturbation_batch_size`."""
        return self.perturbation_batch_size

    @scorecam_batch_size.setter
    def scorecam_batch_size(self, size: int) -> None:
        self.perturbation_batch_size = _batch_size(size, None)

    @property
    def target_layer(self) -> Optional[str]:
        """The resolved target layer's dotted name (``None`` until known)."""
        return self._layer[0] if self._layer else None

    @property
    def layer(self) -> Optional[tuple[str, nn.Module]]:
        """``(dotted name, module)`` of the target layer; ``None`` until an automatic search
        has run (see :meth:`resolve_layer`)."""
        return self._layer

    def resolve_layer(self, x: Tensor) -> tuple[str, nn.Module]:
        """The target layer, found with one hooked forward of ``x`` if the automatic search
        needs one (models whose layer only shows on a forward); kept for later calls."""
        if self._layer is None:
            self._layer = resolve_layer(self.model, None, x)
        return self._layer

    def __call__(
        self,
        x: Tensor,
        targets: TargetSpec = None,
        methods: Union[str, Iterable[str]] = ("gradcam",),
        size: SizeSpec = None,
        normalize: bool = True,
        create_graph: bool = False,
    ) -> dict[str, Tensor]:
        """The maps ``{method: Tensor[B, h, w]}`` (float32, on x's device); see :meth:`compute`."""
        return self.compute(x, targets, methods, size, normalize, create_graph).maps

    def compute(
        self,
        x: Tensor,
        targets: TargetSpec = None,
        methods: Union[str, Iterable[str]] = ("gradcam",),
        size: SizeSpec = None,
        normalize: bool = True,
        create_graph: bool = False,
    ) -> CAMResult:
        """The maps of ``methods`` for images ``x [B, C, H, W]``, with the logits and classes.

        Args:
            x: the images.
            targets: the class explained per image (an int for all, a sequence or a tensor);
                ``None``: the predicted classes.
            methods: one registered method name or several (any case).
            size: the maps' size: ``None`` (the layer's grid), ``"input"``, an int (square) or ``(h, w)``.
            normalize: min-max normalise each map to ``[0, 1]``.
            create_graph: keep the maps and logits differentiable w.r.t. the model's
                parameters (one forward serves both a CE loss and a saliency loss).
        """
        _check_input(x)
        chosen = _resolve_methods(methods)
        out_size = resolve_size(size, (int(x.shape[-2]), int(x.shape[-1])))
        with self._untouched(create_graph), torch.inference_mode(False), torch.enable_grad():
            if x.is_inference():
                x = x.clone()
            name, layer = self.resolve_layer(x)
            keep_head = any(HEAD_GRAPH in m.passes for m in chosen)
            logits, raw, coupled = self._traced_forward(x, name, layer, create_graph, keep_head)
            layout = self.last_layout = self._layout(name, layer, raw, x)
            mixed = x.shape[0] > 1 and any(m.backprop is not None for m in chosen)  # gradients can mix
            per_image = self._per_image(coupled if mixed else [], name)
            targets = _check_targets(targets, logits, chosen)
            gradients = self._gradients(logits, raw, targets, chosen, create_graph, per_image, keep_head)
            activations, gradients = _to_nchw(layout, name, raw, gradients)
            if not create_graph:
                self._refuse_blank_once(name, x, activations, gradients, logits)
            ctx = CAMContext(
                activations=activations.float() if create_graph else activations.detach().float(),
                gradients=gradients,
                model=self.model if self.output_key is None else LogitsView(self.model, self.output_key),
                inputs=x,
                targets=targets,
                perturbation_batch_size=self.perturbation_batch_size,
                layer=layer,
                layout=layout,
                raw_activations=raw.detach(),
                logits=logits.detach(),
                head=(logits, raw) if keep_head else None,
                seed=self.seed,
                methods=tuple(chosen),
            )
            grid = (int(activations.shape[-2]), int(activations.shape[-1]))
            maps = self._run_methods(ctx, chosen, out_size or grid, normalize, create_graph)
        if not create_graph:
            logits = logits.detach()
        return CAMResult(maps=maps, logits=logits, targets=targets, layer=name, grid=grid, layout=str(layout))

    def _untouched(self, create_graph: bool) -> AbstractContextManager[object]:
        """An explanation (no ``create_graph``) leaves train-mode BatchNorm statistics as they
        were (restored after the backward pass, which reads them) and every random generator
        (a train-mode dropout's masks draw from them); a training forward moves both."""
        stack = ExitStack()
        if not create_graph:
            stack.enter_context(preserved_buffers(_updating_norms(self.model)))
            stack.enter_context(preserved_rng())
        return stack

    def _traced_forward(
        self, x: Tensor, name: str, layer: nn.Module, full_graph: bool, keep_head: bool
    ) -> tuple[Tensor, Tensor, list[str]]:
        """:meth:`_forward`, recording the batch-coupled modules that run after the layer;
        timm attention unfused when a method differentiates the head twice."""
        attention = unfused_attention(self.model) if keep_head else nullcontext()
        with attention, CouplingProbe(self.model, layer) as probe:
            logits, raw = self._forward(x, name, layer, full_graph=full_graph)
        return logits, raw, probe.after

    def _refuse_blank_once(
        self, name: str, x: Tensor, activations: Tensor, gradients: dict[str, Tensor], logits: Tensor
    ) -> None:
        """:func:`_refuse_blank_maps`; its all-zero gradient check reads a value back to the
        host, so it runs on the engine's first call at each layer (a layer the gradient cannot
        reach is a property of the model): later calls' gradient path has no host-device sync."""
        check = name not in self._checked_layers
        _refuse_blank_maps(self.model, name, x, activations, gradients if check else {}, logits)
        self._checked_layers.add(name)

    def _run_methods(
        self, ctx: CAMContext, chosen: list[CAMMethod], size: tuple[int, int], normalize: bool, create_graph: bool
    ) -> dict[str, Tensor]:
        """Each method's map, post-processed to ``size`` (maps at input size, as FullGrad's,
        go to the grid when ``size=None``)."""
        assert ctx.inputs is not None  # the engine's context always has them
        maps = {}
        # methods that run the model again (ScoreCAM, AblationCAM) do so in eval mode:
        # no BatchNorm update, no dropout; every submodule's flag restored after
        rerun = eval_mode(self.model) if any(m.backprop is None for m in chosen) else nullcontext()
        # float32 maps even under autocast: einsum/matmul would otherwise run in bf16/fp16
        with torch.set_grad_enabled(create_graph), torch.autocast(ctx.inputs.device.type, enabled=False), rerun:
            for method in chosen:
                ctx.backprop = method.backprop
                maps[method.name] = postprocess(method.compute(ctx), size, normalize)
        return maps

    def _layout(self, name: str, layer: nn.Module, raw: Tensor, x: Tensor) -> Layout:
        if self._hints is None:
            self._hints = model_hints(self.model, name, layer)
        return resolve_layout(self.layout, raw, self._hints, (int(x.shape[-2]), int(x.shape[-1])), name)

    def _gradients(
        self,
        logits: Tensor,
        activations: Tensor,
        targets: Tensor,
        methods: list[CAMMethod],
        create_graph: bool,
        per_image: bool = False,
        retain: bool = False,
    ) -> dict[str, Tensor]:
        """The batched VJP; one VJP per target (per image and target with ``per_image``)
        where the graph cannot be batched. ``retain`` keeps the head's graph (second-order methods)."""
        try:
            return _batched_gradients(logits, activations, targets, methods, create_graph, per_image, retain=retain)
        except RuntimeError as err:
            if "Batching rule not implemented" not in str(err) and "vmap" not in str(err):
                raise
            if not self._warned_unbatched:
                self._warned_unbatched = True
                warnings.warn(
                    f"CAMEngine: this model's graph cannot be batched ({str(err).splitlines()[0]}), as with "
                    "torch.compile; gradients now take one backward pass per target (same maps, more time).",
                    stacklevel=3,
                )
            return _batched_gradients(
                logits, activations, targets, methods, create_graph, per_image, batched=False, retain=retain
            )

    def _forward(self, x: Tensor, name: str, layer: nn.Module, full_graph: bool) -> tuple[Tensor, Tensor]:
        """Run the model once, capturing ``A``. Unless ``full_graph``, the network up to
        the target layer runs without autograd and only the head (A -> logits) records a
        graph: the cost of a plain no-grad forward plus a tiny head."""
        captured: dict[str, Tensor] = {}
        calls = [0]

        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> Tensor:
            calls[0] += 1
            if not isinstance(output, Tensor) or output.dim() not in (3, 4):
                shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
                raise ValueError(
                    f"Target layer {name!r} outputs {shape}; a CAM needs a feature map [B, K, h, w], "
                    "[B, h, w, K] or tokens [B, N, K]. Pick another target_layer."
                )
            if not full_graph:
                torch.set_grad_enabled(True)  # record the head only; restored by no_grad's exit
            # A leaf when nothing upstream needs grad (frozen model), so dT/dA exists.
            act = output if output.requires_grad else output.detach().requires_grad_()
            captured["A"] = act
            return act.clone()  # later in-place ops cannot alter A

        handle = layer.register_forward_hook(hook)
        try:
            with torch.set_grad_enabled(full_graph):
                logits = logits_of(self.model(x), self._width, self.output_key)
        finally:
            handle.remove()
        if "A" not in captured:
            raise RuntimeError(f"Target layer {name!r} was not called during the model's forward pass.")
        if calls[0] > 1:
            raise reused_layer_error(self.model, name, calls[0], x)
        if logits.shape[0] != x.shape[0]:
            raise ValueError(f"The model returned {logits.shape[0]} rows of logits for a batch of {x.shape[0]}.")
        return logits, captured["A"]

    def _per_image(self, coupled: list[str], layer: str) -> bool:
        """Whether this call needs one VJP row per image; warns once per engine."""
        if not coupled:
            return False
        if not self._coupling_warned:
            self._coupling_warned = True
            warnings.warn(coupling_message(self.batch_coupling, coupled, layer, self.model), UserWarning, stacklevel=4)
        return COUPLING_POLICIES[self.batch_coupling]

    def __repr__(self) -> str:
        return f"CAMEngine(model={type(self.model).__name__}, target_layer={self.target_layer!r})"


def _refuse_blank_maps(
    model: nn.Module, name: str, x: Tensor, activations: Tensor, gradients: dict[str, Tensor], logits: Tensor
) -> None:
    """Refuse maps that would be blank for a reason the user can fix: a 1x1 grid (one value
    per map), or a layer whose own positions (prefix tokens dropped) get no gradient (a
    class-token head). Logits equal for every image (a zero-initialised head, as timm's
    hiera / sequencer start) are not refused: there blank maps are the truth."""
    if activations.shape[-2] * activations.shape[-1] == 1:
        raise ValueError(
            f"Target layer {name!r} gives a 1x1 grid for a {x.shape[-2]}x{x.shape[-1]} input: every map would be "
            "one value, blank after normalisation. Use a larger input, or pass an earlier target_layer (one whose "
            "output has h*w > 1)."
        )
    if gradients and not any(bool(g.any()) for g in gradients.values()):
        constant = logits.shape[0] > 1 and bool((logits.detach() == logits.detach()[:1]).all())
        if not constant:
            raise zero_gradient_error(model, name)


def _updating_norms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorms whose running statistics a forward would update now (train mode)."""
    return [m for _, m, _ in typed_modules(model) if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]


def _batch_size(size: int, old_name: Optional[int]) -> int:
    """``perturbation_batch_size``, or its old name ``scorecam_batch_size`` when given."""
    if old_name is not None:
        if size not in (32, old_name):
            raise ValueError(
                f"perturbation_batch_size={size} and scorecam_batch_size={old_name} (its old name) disagree; pass one."
            )
        size = old_name
    if size < 1:
        name = "perturbation_batch_size" if old_name is None else "scorecam_batch_size"
        raise ValueError(f"{name} must be >= 1; got {size}.")
    return int(size)


def _initial_layer(model: nn.Module, target_layer: LayerSpec) -> Optional[tuple[str, nn.Module]]:
    """The target layer when known without a forward; a bad name fails here, at construction.
    ``None``: the automatic search needs a hooked forward (done on the first call)."""
    if target_layer is not None:
        return resolve_layer(model, target_layer)
    try:
        return resolve_layer(model, None)
    except ValueError:
        return None


def _check_input(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor [B, C, H, W]; got {type(x).__name__}.")
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D image batch [B, C, H, W]; got shape {tuple(x.shape)}.")
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch (B = 0).")


def _resolve_methods(methods: Union[str, Iterable[str]]) -> list[CAMMethod]:
    return [get_method(name) for name in method_names(methods)]


def _check_targets(targets: TargetSpec, logits: Tensor, methods: list[CAMMethod]) -> Tensor:
    """:func:`~.classes.explained_classes`, refusing a one-class model for contrastive targets."""
    classes = logits.shape[1]
    contrastive = [m.name for m in methods if m.backprop in ("mean", "max", "lse", "finer")]
    if classes < 2 and contrastive:
        raise ValueError(
            f"{contrastive[0]} compares the target class with the others: it needs at least 2 classes; "
            f"the model has {classes}."
        )
    return explained_classes(targets, logits)


def _batched_gradients(
    logits: Tensor,
    activations: Tensor,
    targets: Tensor,
    methods: list[CAMMethod],
    create_graph: bool,
    per_image: bool = False,
    batched: bool = True,
    retain: bool = False,
) -> dict[str, Tensor]:
    """``{backprop target: dT/dA float32}`` (A's own layout) from one batched VJP, one row
    per image and target when ``per_image`` (layers after A mix the batch), or one VJP per
    target with ``batched=False``."""
    names = list(dict.fromkeys(m.backprop for m in methods if m.backprop is not None))
    if not names:
        return {}
    vectors = torch.stack([BACKPROP_TARGETS[name](logits, targets) for name in names])
    if not create_graph:
        vectors = vectors.detach()
    grads: Union[Tensor, list[Tensor]]  # [T, B, K, h, w] or T tensors [B, K, h, w]
    if per_image and batched:
        grads = per_image_gradients(logits, activations, vectors, create_graph)
    elif per_image:  # one image row at a time: exact where nothing can be batched
        grads = _image_by_image(logits, activations, vectors, create_graph)
    elif batched and len(names) > 1:
        # retain_graph: a graph that fails to batch stays usable for the per-target fallback
        (grads,) = torch.autograd.grad(
            logits,
            activations,
            grad_outputs=vectors,
            is_grads_batched=True,
            create_graph=create_graph,
            retain_graph=True,
        )
    else:
        grads = _target_by_target(logits, activations, vectors, create_graph, retain)
    return {name: grad.float() for name, grad in zip(names, grads)}


def _image_by_image(logits: Tensor, activations: Tensor, vectors: Tensor, create_graph: bool) -> list[Tensor]:
    """Per target, image ``b``'s own gradient from a VJP with its row alone (no batching)."""
    eye = torch.eye(logits.shape[0], dtype=vectors.dtype, device=vectors.device)
    return [
        torch.stack(
            [
                torch.autograd.grad(
                    logits, activations, grad_outputs=v * eye[b, :, None], retain_graph=True, create_graph=create_graph
                )[0][b]
                for b in range(logits.shape[0])
            ]
        )
        for v in vectors
    ]


def _target_by_target(
    logits: Tensor, activations: Tensor, vectors: Tensor, create_graph: bool, retain: bool
) -> list[Tensor]:
    """One VJP per target; the graph is freed after the last unless kept (``retain``)."""
    return [
        torch.autograd.grad(
            logits,
            activations,
            grad_outputs=v,
            create_graph=create_graph,
            retain_graph=create_graph or retain or i < len(vectors) - 1,
        )[0]
        for i, v in enumerate(vectors)
    ]


def _to_nchw(layout: Layout, layer: str, raw: Tensor, gradients: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Activations and gradients in ``[B, K, h, w]``: the one place where layouts apply."""
    activations = layout.convert(raw)
    if not isinstance(activations, Tensor) or activations.dim() != 4 or activations.shape[0] != raw.shape[0]:
        shape = tuple(activations.shape) if isinstance(activations, Tensor) else type(activations).__name__
        raise ValueError(
            f"layout {layout} turned target layer {layer!r}'s output {tuple(raw.shape)} into {shape}, not [B, K, h, w]."
        )
    return activations, {name: layout.convert(grad) for name, grad in gradients.items()}

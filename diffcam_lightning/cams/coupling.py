"""Layers after the CAM layer that mix the images of a batch, and exact per-image maps.

The engine takes every map from one batched VJP ``sum_b v_b . dy_b/dA``: exact when
image ``b``'s logits depend only on its own activations ``A_b``. A train-mode BatchNorm
after the CAM layer breaks that: its batch statistics make ``y_b`` depend on every
``A_b'``, so image ``b'``'s map picks up the other images' gradients (measured on
torchvision resnet18 in train mode at ``layer3``: 52% relative error). With
``batch_coupling="exact"`` (default) the engine then takes one VJP row per image
(``dy_b/dA_b`` alone): exact per-image gradients of this forward, at about B times the
cost of the backward from the logits to the layer. The forward's batch statistics still
make every logit depend on the batch: only ``model.eval()`` gives batch-independent maps,
so the engine warns once either way.

A layer type is batch-coupled when a check registered in ``BATCH_COUPLED`` says so.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

from ..registry import Registry

CouplingCheck = Callable[[nn.Module], bool]

BATCH_COUPLED: Registry[type[nn.Module], CouplingCheck] = Registry("batch-coupled module type")  # type: ignore[type-var]  # mypy does not see a class as Hashable
"""Module type -> ``check(module)``, true when the module, as it is now, mixes the images
of a batch (read-only; add with :func:`register_batch_coupled`)."""

BatchCoupling = Literal["exact", "batched"]
"""The ``batch_coupling`` choices: one VJP row per image, or one shared VJP."""
COUPLING_POLICIES: dict[str, bool] = {"exact": True, "batched": False}
"""``batch_coupling`` option -> whether the gradients are taken one image at a time."""

# one chunk of per-image VJP rows may hold this many bytes of gradients (rows x batch x A)
ROW_CHUNK_BYTES = 256 * 2**20

# model -> its modules of a registered type, found once per model (walking a DenseNet-121's
# 559 modules costs ~2 ms, too much for every call); their state is checked per call
Typed = list[tuple[str, nn.Module, CouplingCheck]]
_TYPED_MODULES: weakref.WeakKeyDictionary[nn.Module, Typed] = weakref.WeakKeyDictionary()


def register_batch_coupled(cls: type[nn.Module], *, replace: bool = False) -> Callable[[CouplingCheck], CouplingCheck]:
    """Declare ``cls`` (and subclasses) batch-coupled whenever ``check(module)`` is true; a
    type already registered is refused unless ``replace=True``."""

    def decorator(check: CouplingCheck) -> CouplingCheck:
        BATCH_COUPLED.register(cls, check, replace=replace)
        _TYPED_MODULES.clear()
        return check

    return decorator


@register_batch_coupled(_BatchNorm)
def _batchnorm_uses_batch_statistics(module: nn.Module) -> bool:
    """BatchNorm1d/2d/3d, SyncBatchNorm, timm's BatchNormAct2d: batch statistics in train
    mode, and in eval mode too without running statistics."""
    return module.training or not module.track_running_stats


def check_policy(policy: str) -> BatchCoupling:
    """``policy`` when it is a ``batch_coupling`` choice; else a ValueError naming them."""
    if policy not in COUPLING_POLICIES:
        raise ValueError(f"Unknown batch_coupling {policy!r}; valid: {', '.join(COUPLING_POLICIES)}.")
    return cast(BatchCoupling, policy)


def is_batch_coupled(module: nn.Module) -> bool:
    """Whether ``module``, as it is now, mixes the images of a batch."""
    return any(isinstance(module, cls) and check(module) for cls, check in BATCH_COUPLED.items())


def typed_modules(model: nn.Module) -> Typed:
    """The model's modules of a registered type with their check (read once per model, as
    the engine reads its target layer once)."""
    found = _TYPED_MODULES.get(model)
    if found is None:
        found = [
            (name, module, check)
            for name, module in model.named_modules()
            for cls, check in BATCH_COUPLED.items()
            if isinstance(module, cls)
        ]
        _TYPED_MODULES[model] = found
    return found


class CouplingProbe:
    """Records, during one forward, the batch-coupled modules that run after ``layer``.

    Only modules that are batch-coupled as they are now get a hook, so a model in eval
    mode costs a check of its BatchNorms' ``training`` flags."""

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        self.layer = layer
        self.candidates = [(n, m) for n, m, check in typed_modules(model) if m is not layer and check(m)]
        self.after: list[str] = []
        self._layer_done = False
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> CouplingProbe:
        if self.candidates:
            self._handles.append(self.layer.register_forward_hook(self._mark_layer))
            for name, module in self.candidates:
                self._handles.append(module.register_forward_hook(self._recorder(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _mark_layer(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._layer_done = True

    def _recorder(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._layer_done and name not in self.after:
                self.after.append(name)

        return hook


def coupling_message(policy: str, coupled: list[str], layer: str, model: nn.Module) -> str:
    """The once-per-engine warning: which layers mix the batch, what the maps are, the cost."""
    modules = dict(model.named_modules())
    names = ", ".join(f"{n!r} ({type(modules[n]).__name__})" for n in coupled[:3])
    more = f" and {len(coupled) - 3} more" if len(coupled) > 3 else ""
    head = (
        f"CAMEngine: {names}{more} after target layer {layer!r} mix the images of a batch "
        "(train-mode BatchNorm uses batch statistics). "
    )
    if COUPLING_POLICIES[policy]:
        body = (
            "Each map is taken with its own VJP row (exact per-image gradients of this forward, about "
            f"B times the cost of the backward from the logits to {layer!r}), but the forward's batch "
            "statistics still make every logit depend on the whole batch. Call model.eval() for "
            "batch-independent maps, or pass batch_coupling='batched' for one shared VJP "
            "(faster, each map mixed with the other images' gradients)."
        )
    else:
        body = (
            "batch_coupling='batched': each map includes the other images' gradients through those "
            "statistics. Call model.eval() for batch-independent maps, or use batch_coupling='exact' "
            f"for one VJP row per image (about B times the cost of the backward from the logits to {layer!r})."
        )
    return head + body


def per_image_gradients(
    logits: Tensor, activations: Tensor, vectors: Tensor, create_graph: bool, chunk_bytes: int = ROW_CHUNK_BYTES
) -> Tensor:
    """``[T, B, K, h, w]``: for each backprop target ``t`` and image ``b``, the gradient of
    ``vectors[t, b] . y_b`` w.r.t. ``A_b`` alone (one VJP row per image, chunked so a
    chunk's gradients stay under ``chunk_bytes``)."""
    targets, batch = vectors.shape[:2]
    row_bytes = activations.numel() * max(activations.element_size(), 4)
    chunk = max(1, min(batch, chunk_bytes // max(1, targets * row_bytes)))
    eye = torch.eye(batch, dtype=vectors.dtype, device=vectors.device)
    parts = []
    for start in range(0, batch, chunk):
        stop = min(start + chunk, batch)
        rows = vectors[:, None] * eye[start:stop, :, None]  # [T, n, B, C]: image i's row only
        (grads,) = torch.autograd.grad(
            logits,
            activations,
            grad_outputs=rows.flatten(0, 1),
            is_grads_batched=True,
            retain_graph=True,
            create_graph=create_graph,
        )
        grads = grads.view(targets, stop - start, *activations.shape)
        own = torch.arange(stop - start, device=grads.device)
        parts.append(grads[:, own, own + start])  # [T, n, K, h, w]: each row's own image
    return torch.cat(parts, dim=1)

"""What a call must leave as it found it: every submodule's train/eval flag (saved and
restored one by one), parameters' ``.grad``, buffers, and the random generators.

``model.train(flag)`` sets every submodule to one flag: a train-mode wrapper around a
frozen (eval-mode) backbone would come back with the backbone in train mode, its
BatchNorm statistics then moved by every later forward. These helpers restore each
submodule's own flag instead (as torchcam does).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn


@contextlib.contextmanager
def _restored(objects: Iterable[object], attribute: str) -> Iterator[None]:
    """Each object's ``attribute`` (the value object itself) set back on exit."""
    saved = [(obj, getattr(obj, attribute)) for obj in objects]
    try:
        yield
    finally:
        for obj, value in saved:
            setattr(obj, attribute, value)


def preserved_modes(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Whatever happens inside, every submodule's ``training`` flag is as before on exit."""
    return _restored(model.modules(), "training")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside (no BatchNorm update, no dropout); each submodule's
    own flag restored on exit."""
    with preserved_modes(model):
        model.eval()
        yield


def preserved_grads(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Every parameter's ``.grad`` (the tensor object, or ``None``) as before on exit, for
    code that backpropagates into ``.grad`` (pytorch-grad-cam)."""
    return _restored(model.parameters(), "grad")


@contextlib.contextmanager
def preserved_buffers(modules: Iterable[nn.Module]) -> Iterator[None]:
    """The buffers of ``modules`` (a train-mode BatchNorm's running statistics and batch
    count) copied back in place on exit: a forward that only explains leaves them as they were."""
    saved = [(buf, buf.detach().clone()) for module in modules for buf in module.buffers(recurse=False)]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def capture_rng() -> dict[str, Any]:
    """The torch, CUDA (when initialised), numpy and ``random`` generator states."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "random": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Random numbers drawn inside (a train-mode dropout's masks) leave every generator as before."""
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


@contextlib.contextmanager
def unfused_attention(model: nn.Module) -> Iterator[None]:
    """timm's attention modules on their unfused (equal) path for the duration, restored
    after: a method that differentiates the head twice (ShapleyCAM's Hessian term) needs the
    double backward that PyTorch's fused CPU attention lacks ("derivative for
    aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented")."""
    changed = [m for m in model.modules() if getattr(m, "fused_attn", False) is True]
    for module in changed:
        module.fused_attn = False  # type: ignore[assignment]
    try:
        yield
    finally:
        for module in changed:
            module.fused_attn = True  # type: ignore[assignment]

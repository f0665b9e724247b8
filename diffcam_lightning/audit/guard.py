"""Keeping the audit invisible to training: modes, RNG, autocast and grad mode.

``audit_guard(module)`` puts the module in eval mode, re-enables autograd (validation runs
under ``no_grad``, ``trainer.validate`` under ``inference_mode``), switches autocast off so
CAMs are float32 under mixed precision, and on exit restores every submodule's
``training`` flag and the torch / CUDA / numpy / ``random`` generators, so a fit with the
audit draws the same random numbers as one without it.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ..cams.modes import eval_mode


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
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
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # a device type without autocast support
        return contextlib.nullcontext()


@contextlib.contextmanager
def audit_guard(module: nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode + grad on + autocast off inside; modes and RNG states restored on exit."""
    rng = capture_rng()
    try:
        with eval_mode(module), torch.inference_mode(False), torch.enable_grad(), _no_autocast(device):
            yield
    finally:
        restore_rng(rng)

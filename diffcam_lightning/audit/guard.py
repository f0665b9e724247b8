"""Keeping the audit invisible to training: modes, RNG, autocast and grad mode.

``audit_guard(module)`` puts the module in eval mode, re-enables autograd (validation runs
under ``no_grad``, ``trainer.validate`` under ``inference_mode``), switches autocast off so
CAMs are float32 under mixed precision, and on exit restores every submodule's
``training`` flag and the torch / CUDA / numpy / ``random`` generators, so a fit with the
audit draws the same random numbers as one without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..cams.modes import capture_rng, eval_mode, preserved_rng, restore_rng

__all__ = ["audit_guard", "capture_rng", "preserved_rng", "restore_rng"]  # the RNG helpers live in cams.modes


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
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

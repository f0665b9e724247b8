"""The reference model for susceptibility: the model at fit start, or a checkpoint.

A checkpoint's weights are never loaded into the live model: ``WeightsSwap`` runs the
audited module with the checkpoint's tensors through ``torch.func.functional_call``
(no copy of the module, no mutation of the one being trained).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call
from typing_extensions import override


class WeightsSwap(nn.Module):
    """``model`` evaluated with ``state`` instead of its own parameters and buffers."""

    def __init__(self, model: nn.Module, state: dict[str, Tensor]) -> None:
        super().__init__()
        self.model = model
        self._state = state

    @override
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.model, self._state, args, kwargs, strict=True)


def load_reference_state(path: Union[str, Path], model: nn.Module, prefix: str = "") -> dict[str, Tensor]:
    """The state dict of ``model`` read from ``path`` (a Lightning checkpoint or a plain state
    dict, ``weights_only=True``). Keys may carry ``prefix`` (the model's name inside the
    LightningModule); the result's keys and shapes match ``model.state_dict()`` exactly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CAMAudit reference checkpoint {str(path)!r} does not exist.")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle payloads that are not plain tensors/containers
        raise ValueError(
            f"CAMAudit could not read {str(path)!r} with torch.load(weights_only=True): {err}. "
            "Save a plain state dict (torch.save(model.state_dict(), path)) or a Lightning checkpoint."
        ) from err
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise ValueError(f"CAMAudit reference {str(path)!r} holds a {type(raw).__name__}, not a state dict.")
    wanted = model.state_dict()
    candidates = [""] + ([prefix + "."] if prefix else [])
    for p in candidates:
        state = {k[len(p) :]: v for k, v in raw.items() if k.startswith(p)}
        if set(wanted) <= set(state):
            bad = [k for k in wanted if tuple(state[k].shape) != tuple(wanted[k].shape)]
            if bad:
                k = bad[0]
                raise ValueError(
                    f"CAMAudit reference {str(path)!r}: {p}{k} has shape {tuple(state[k].shape)}, "
                    f"the model's has {tuple(wanted[k].shape)} ({len(bad)} mismatched tensors)."
                )
            return {k: state[k].to(device=wanted[k].device, dtype=wanted[k].dtype) for k in wanted}
    missing = sorted(set(wanted) - {k[len(candidates[-1]) :] for k in raw})
    raise ValueError(
        f"CAMAudit reference {str(path)!r} does not hold the audited model's weights: "
        f"{len(missing)} keys missing (e.g. {', '.join(candidates[-1] + k for k in missing[:3])}); "
        f"tried key prefixes {candidates}. Its first keys: {', '.join(list(raw)[:3])}."
    )

"""Checkpoint and weights files: the one reader (:func:`read_checkpoint`), a model's
tensors out of a file (:func:`match_state`), and the checks of a ``--ckpt_path`` before
Lightning loads it: a file that is not a Lightning checkpoint, or one of another model, is
named as such (Lightning itself ends in ``KeyError: 101`` for a text file, or a long
``load_state_dict`` error for the wrong model)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

from torch import nn

from ..errors import CheckpointError, CheckpointNotFoundError

_LIGHTNING_KEYS = ("state_dict", "pytorch-lightning_version")

# prefixes under which a LightningModule may hold the network
_STATE_PREFIXES = ("", "model.", "net.", "backbone.", "network.")


def read_checkpoint(path: Union[str, Path], *, lightning: bool = False) -> dict[str, Any]:
    """The one reader of checkpoint and weights files: ``torch.load(weights_only=True)`` on
    the CPU, every failure a :class:`CheckpointError` that names the file.

    Args:
        path: the file.
        lightning: require a Lightning checkpoint (``state_dict`` and
            ``pytorch-lightning_version``), read memory-mapped since most of its tensors are
            never touched; otherwise any dict (a plain state dict may be in torch's legacy
            format, which cannot be memory-mapped).

    Raises:
        CheckpointNotFoundError: no such file (also a ``FileNotFoundError``).
        CheckpointError: torch cannot read it, or it is not what was asked for.
    """
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointNotFoundError(f"Checkpoint {str(path)!r} does not exist or is not a file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=lightning)
    except Exception as err:  # unpickling errors come in many types
        reason = f"torch.load cannot read it: {type(err).__name__}"
        if lightning:
            raise CheckpointError(
                f"{str(path)!r} is not a PyTorch Lightning checkpoint ({reason}). Pass a .ckpt file written by a "
                "diffcam fit."
            ) from err
        raise CheckpointError(f"Cannot read checkpoint {str(path)!r} ({reason}: {err}).") from err
    if lightning:
        _check_lightning_keys(path, checkpoint)
    elif not isinstance(checkpoint, dict):
        raise CheckpointError(f"Checkpoint {str(path)!r} is not a dict of tensors (got {type(checkpoint).__name__}).")
    read: dict[str, Any] = checkpoint
    return read


def read_lightning_checkpoint(path: Union[str, Path]) -> dict[str, Any]:
    """:func:`read_checkpoint` of a file that must be a Lightning checkpoint."""
    return read_checkpoint(path, lightning=True)


def _check_lightning_keys(path: Path, checkpoint: object) -> None:
    missing = [k for k in _LIGHTNING_KEYS if not (isinstance(checkpoint, dict) and k in checkpoint)]
    if missing:
        found = (
            ", ".join(map(repr, list(checkpoint)[:5])) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        )
        raise CheckpointError(
            f"{str(path)!r} is not a PyTorch Lightning checkpoint: no {' or '.join(map(repr, missing))} "
            f"(found {found}). A plain weights file goes in model.weights_file, not --ckpt_path."
        )


def state_dict_of(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    """The state dict of a read file: a Lightning checkpoint's ``state_dict``, or the file's
    dict itself (a plain state dict); ``path`` names the file in errors."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"Checkpoint {path} holds no state_dict.")
    return state


def match_state(model: nn.Module, state: dict[str, Any], path: Path, arch: str) -> dict[str, Any]:
    """The entries of ``state`` that are ``model``'s own, under any known prefix (``model.``
    of a LightningModule, ...), every tensor checked by name and shape; errors name the
    file ``path`` and the architecture ``arch``."""
    expected = model.state_dict()
    best: dict[str, Any] = {}
    for prefix in _STATE_PREFIXES:
        candidate = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        candidate = {k: v for k, v in candidate.items() if k in expected}
        if len(candidate) > len(best):
            best = candidate
    missing = [k for k in expected if k not in best]
    if missing:
        raise ValueError(
            f"Checkpoint {path} is not a {arch} checkpoint: {len(missing)} of its {len(expected)} tensors are "
            f"missing (e.g. {', '.join(missing[:3])}). Is it a checkpoint of another architecture?"
        )
    for key, value in best.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"Checkpoint {path}: tensor {key!r} has shape {tuple(value.shape)}, but {arch} with this class count "
                f"expects {tuple(expected[key].shape)} (does the checkpoint's class count match the data's?)."
            )
    return best


def network_state_from_checkpoint(
    model: nn.Module, checkpoint: dict[str, Any], path: Path, arch: str
) -> dict[str, Any]:
    """``model``'s state dict out of a read Lightning checkpoint (``path`` for errors)."""
    return match_state(model, state_dict_of(checkpoint, path), path, arch)


def check_hyperparameters_fit(path: Union[str, Path], checkpoint: dict[str, Any], model_class: type[Any]) -> None:
    """Refuse a checkpoint whose saved hyperparameters ``model_class`` does not take (the
    checkpoint of another LightningModule), before LightningCLI applies them as defaults."""
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    if "_class_path" in hparams:  # LightningCLI in subclass mode records the class itself
        saved = str(hparams["_class_path"])
        ours = f"{model_class.__module__}.{model_class.__qualname__}"
        if saved.rsplit(".", 1)[-1] != model_class.__name__:
            raise CheckpointError(f"Checkpoint {str(path)!r} is of another model: {saved}, not {ours}.")
        return
    accepted = set(inspect.signature(model_class.__init__).parameters) - {"self"}
    foreign = sorted(k for k in hparams if not k.startswith("_") and k not in accepted)
    if foreign:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} is of another model: its hyperparameters {', '.join(foreign[:4])} are not "
            f"{model_class.__name__}'s (it takes {', '.join(sorted(accepted))})."
        )


def check_checkpoint_fits(
    path: Union[str, Path], model: nn.Module, checkpoint: Optional[dict[str, Any]] = None
) -> None:
    """Refuse a Lightning checkpoint whose weights are not ``model``'s (other architecture,
    other class count), naming the first differing tensors, or whose class names are not
    the model's (the data's, linked by the CLI) (``checkpoint``: the file already read)."""
    checkpoint = checkpoint if checkpoint is not None else read_lightning_checkpoint(path)
    state = checkpoint["state_dict"]
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or shapes):
        ours = _hparams_of(model).get("class_names")
        check_class_names(checkpoint_class_names(checkpoint), ours, f"Checkpoint {str(path)!r}")
        return
    what = type(model).__name__
    arch = _hparams_of(model).get("model_name")
    if arch:
        what += f"({arch})"
    details = []
    if missing or unexpected:
        details.append(
            f"{len(missing)} of the model's {len(expected)} tensors are missing from it (e.g. {', '.join(missing[:2]) or '-'}) "
            f"and {len(unexpected)} of its tensors are not the model's (e.g. {', '.join(unexpected[:2]) or '-'})"
        )
    if shapes:
        key = shapes[0]
        details.append(
            f"tensor {key!r} has shape {tuple(state[key].shape)}, the model expects {tuple(expected[key].shape)}"
        )
    raise CheckpointError(f"Checkpoint {str(path)!r} is of another model than this {what}: {'; '.join(details)}.")


def _hparams_of(model: nn.Module) -> Mapping[str, Any]:
    """A LightningModule's saved hyperparameters; a plain module has none."""
    from lightning.pytorch.core.mixins.hparams_mixin import HyperparametersMixin

    return model.hparams if isinstance(model, HyperparametersMixin) else {}


def checkpoint_class_names(checkpoint: dict[str, Any]) -> Optional[list[str]]:
    """The class names a diffcam checkpoint states (its ``diffcam`` entry, else its hyperparameters)."""
    meta = checkpoint.get("diffcam")
    names = meta.get("class_names") if isinstance(meta, dict) else None
    if names is None:
        names = (checkpoint.get("hyper_parameters") or {}).get("class_names")
    return [str(n) for n in names] if names else None


def check_class_names(trained: Optional[Sequence[str]], data: Optional[Sequence[str]], where: str) -> None:
    """Refuse data whose class names differ from the checkpoint's, or come in another order:
    the same class count is not enough, every label would be scored against another class."""
    if not trained or not data or list(trained) == list(data) or len(trained) != len(data):
        return  # nothing stated, the same, or a count mismatch (the weights' shapes say so)
    first = next(i for i, (a, b) in enumerate(zip(trained, data)) if a != b)
    raise CheckpointError(
        f"{where} was trained on classes {_listed(trained)} but the data's classes are {_listed(data)} "
        f"(first difference at label {first}: {trained[first]!r} vs {data[first]!r}); its labels would be "
        "scored against other classes. Use data with the checkpoint's classes in its order (a folder's classes "
        "are its sorted subfolder names)."
    )


def _listed(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(map(repr, names[:limit]))
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > limit else ''}]"

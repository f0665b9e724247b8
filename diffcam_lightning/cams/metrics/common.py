"""Plumbing shared by every metric family: input checks, scores, resizing, batched
no-grad forwards and the eval-mode guard that leaves the model as it was."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal, Optional, TypeVar, Union

import torch
from torch import Tensor, nn

from ..modes import eval_mode
from ..outputs import logits_of
from ..postprocess import resize

ScoreFn = Callable[[Tensor], Tensor]
Score = Literal["softmax", "logit"]  # the keys of SCORES
FillBaseline = Union[Literal["black", "white", "mean"], float]  # the keys of FILL_VALUES, or a number
SCORES: dict[str, ScoreFn] = {
    "softmax": lambda logits: torch.softmax(logits.float(), dim=1),
    "logit": lambda logits: logits.float(),
}
Baseline = Union[None, float, Tensor, Callable[[Tensor], Tensor]]
PROGRESS_AFTER = 16  # chunks of forwards before a progress bar is shown (progress=None)


def check_inputs(x: Tensor, maps: Tensor, targets: Optional[Tensor]) -> None:
    """Refuses an ``x`` that is not ``[B, C, H, W]``, maps not ``[B, h, w]`` or targets not ``[B]``."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(
            f"x must be an image batch [B, C, H, W]; got {tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}."
        )
    if not isinstance(maps, Tensor) or maps.dim() != 3 or maps.shape[0] != x.shape[0]:
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"maps must be [B, h, w] with B = {x.shape[0]} (the batch of x); got {got}.")
    if targets is not None and tuple(targets.shape) != (x.shape[0],):
        raise ValueError(f"targets must be class indices [B] with B = {x.shape[0]}; got shape {tuple(targets.shape)}.")


def _score_fn(score: str) -> ScoreFn:
    if score not in SCORES:
        raise ValueError(f"Unknown score {score!r}; valid: {', '.join(SCORES)}.")
    return SCORES[score]


def positive_int(name: str, value: int) -> int:
    """``value`` as an int, or a ValueError naming the option ``name``."""
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}.")
    return int(value)


def to_input_size(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Maps at the input's resolution, float32: :func:`~..postprocess.resize` (bilinear,
    ``align_corners=False``, as torchcam) of the maps as float."""
    height, width = size
    return resize(maps.float(), (int(height), int(width)))


def progress_bar(total: int, progress: Optional[bool], desc: str) -> Any:
    """A tqdm bar of ``total`` chunks (imported lazily), shown if ``progress`` or, when None,
    if ``total`` exceeds :data:`PROGRESS_AFTER`."""
    from tqdm.auto import tqdm

    show = total > PROGRESS_AFTER if progress is None else bool(progress)
    return tqdm(total=total, desc=desc, disable=not show, leave=False)


def class_scores(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    score: Score = "softmax",
    batch_size: int = 32,
    progress: Optional[bool] = None,
    desc: str = "scoring",
) -> Tensor:
    """The target class's score (softmax or logit) of each row of ``x``, ``batch_size``
    rows per no-grad forward: ``[N]`` float32."""

    def rows(start: int, stop: int) -> tuple[Tensor, Tensor]:
        return x[start:stop], targets[start:stop]

    return scores_of_rows(model, len(x), rows, score, batch_size, progress, desc)


def resolve_targets(model: nn.Module, x: Tensor, targets: Optional[Tensor]) -> Tensor:
    """``targets`` as class indices on ``x``'s device, or the model's predictions (eval mode)."""
    if targets is not None:
        return torch.as_tensor(targets, device=x.device).long()
    with torch.no_grad(), eval_mode(model):
        return logits_of(model(x)).argmax(dim=1)


def baseline_tensor(baseline: Baseline, x: Tensor) -> Tensor:
    """``baseline`` (None: zeros, a number, a tensor or a function of ``x``) broadcast to ``x``."""
    if baseline is None:
        return torch.zeros_like(x)
    if callable(baseline) and not isinstance(baseline, Tensor):
        baseline = baseline(x)
    value = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    try:
        return torch.broadcast_to(value, x.shape)
    except RuntimeError:
        raise ValueError(
            f"baseline of shape {tuple(value.shape)} does not broadcast to the input {tuple(x.shape)}."
        ) from None


# ---------------------------------------------------------------- the model as it was, NaN for NaN


def finite_rows(maps: Tensor) -> Tensor:
    """``[B]`` bool: the maps without a NaN or infinite value."""
    return torch.isfinite(maps).flatten(1).all(dim=1)


F_ = TypeVar("F_", bound=Callable[..., Any])


def metric(fn: F_) -> F_:
    """Wraps a metric function: the model (if it takes one) runs in :func:`eval_mode`; rows
    whose map is not finite are scored on a blank map and their scores set to NaN, so a
    mean that leaves out NaN leaves them out (a NaN map has no ranking to score)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        maps = bound.arguments.get("maps")
        bad = None
        if isinstance(maps, Tensor) and maps.dim() >= 1:
            bad = ~finite_rows(maps)
            if bool(bad.any()):
                blank = bad.reshape(-1, *[1] * (maps.dim() - 1))
                bound.arguments["maps"] = torch.where(blank, torch.zeros_like(maps), maps)
            else:
                bad = None
        model = bound.arguments.get("model")
        guard = eval_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext()
        with guard:
            out = fn(*bound.args, **bound.kwargs)
        if bad is None:
            return out
        if isinstance(out, dict):
            return {k: _nan_rows(v, bad) for k, v in out.items()}
        return _nan_rows(out, bad)

    return wrapper  # type: ignore[return-value]


def _nan_rows(values: Tensor, bad: Tensor) -> Tensor:
    bad = bad.to(values.device).reshape(-1, *[1] * (values.dim() - 1))
    return torch.where(bad, torch.full_like(values, float("nan")), values.float())


# ---------------------------------------------------------------- shared by the Quantus metrics

FILL_VALUES: dict[str, Callable[[Tensor], Tensor]] = {  # Quantus's perturb_baseline names, per image
    "black": lambda x: x.flatten(1).amin(dim=1),
    "white": lambda x: x.flatten(1).amax(dim=1),
    "mean": lambda x: x.flatten(1).mean(dim=1),
}


def fill_values(x: Tensor, baseline: FillBaseline) -> Tensor:
    """``[B]``: the value that replaces removed features of each image (Quantus's
    ``perturb_baseline``: ``"black"`` = the image's minimum, ``"white"`` its maximum,
    ``"mean"`` its mean, or a number)."""
    if isinstance(baseline, str):
        if baseline not in FILL_VALUES:
            raise ValueError(f"Unknown baseline {baseline!r}; valid: {', '.join(FILL_VALUES)} or a number.")
        return FILL_VALUES[baseline](x)
    return torch.full((x.shape[0],), float(baseline), dtype=x.dtype, device=x.device)


@torch.no_grad()
def scores_of_rows(
    model: nn.Module,
    rows: int,
    build: Callable[[int, int], tuple[Tensor, Tensor]],
    score: Score,
    batch_size: int,
    progress: Optional[bool],
    desc: str,
) -> Tensor:
    """The target scores of ``rows`` inputs, ``build(start, stop) -> (inputs, targets)``
    making ``batch_size`` of them at a time (memory ~ one chunk), one no-grad forward each
    with the model in eval mode: ``[rows]`` float32. Every metric that runs the model
    scores through here."""
    fn, step = _score_fn(score), positive_int("batch_size", batch_size)
    out = []
    with eval_mode(model), progress_bar(-(-rows // step), progress, desc) as bar:
        for start in range(0, rows, step):
            inputs, targets = build(start, min(start + step, rows))
            scores = fn(logits_of(model(inputs)))
            out.append(scores.gather(1, targets[:, None].to(scores.device)).squeeze(1))
            bar.update(1)
    return torch.cat(out) if out else torch.zeros(0)


def normalise_by_max(maps: Tensor) -> Tensor:
    """Each map divided by its largest absolute value (all-zero maps unchanged): Quantus's
    ``normalise_by_max`` per image. (Quantus's default divides by the largest value of the
    whole batch, so one image's score depends on the others; its ``normalise_axes=(1, 2, 3)``
    gives this.)"""
    peak = maps.flatten(1).abs().amax(dim=1).reshape(-1, *[1] * (maps.dim() - 1))
    return torch.where(peak > 0, maps / torch.where(peak > 0, peak, torch.ones_like(peak)), maps)

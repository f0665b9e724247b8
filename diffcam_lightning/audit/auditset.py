"""The audit set: a fixed handful of images (with labels and optional saliency maps).

It is taken once (the first ``N`` samples of the validation data, or of a dataset the
user passes) and kept on the CPU inside the callback's ``state_dict``, so a resumed run
audits exactly the same pixels. Under DDP every rank holds the whole set and audits a
contiguous shard of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate


@dataclass(frozen=True)
class BatchKeys:
    """Where a dict batch keeps its image, label and (optional) saliency map."""

    image: str = "image"
    label: str = "label"
    saliency: str = "saliency"
    has_saliency: str = "has_saliency"


@dataclass
class AuditSet:
    """The fixed images the audit explains every epoch.

    Attributes:
        images: ``[N, C, H, W]``, as the model takes them.
        labels: ``[N]`` class indices, or ``None`` (needed when ``cam_class="label"``).
        saliency: ``[N, H, W]`` saliency maps, or ``None``.
        has_saliency: bool ``[N]``: which saliency maps are real (not placeholders).
    """

    images: Tensor
    labels: Optional[Tensor] = None
    saliency: Optional[Tensor] = None
    has_saliency: Optional[Tensor] = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def slice(self, start: int, stop: int) -> AuditSet:
        def cut(t: Optional[Tensor]) -> Optional[Tensor]:
            return None if t is None else t[start:stop]

        return AuditSet(self.images[start:stop], cut(self.labels), cut(self.saliency), cut(self.has_saliency))

    def shard_bounds(self, rank: int, world_size: int) -> tuple[int, int]:
        """``(start, stop)`` of rank ``rank``'s contiguous block (rank 0 holds the first images)."""
        per = -(-len(self) // max(world_size, 1))
        return min(rank * per, len(self)), min((rank + 1) * per, len(self))

    def shard(self, rank: int, world_size: int) -> AuditSet:
        """The contiguous block of rank ``rank`` (rank 0 holds the first images)."""
        return self.slice(*self.shard_bounds(rank, world_size))

    def batches(self, batch_size: int) -> Iterable[AuditSet]:
        for start in range(0, len(self), batch_size):
            yield self.slice(start, start + batch_size)

    def to(self, device: torch.device) -> AuditSet:
        def move(t: Optional[Tensor]) -> Optional[Tensor]:
            return None if t is None else t.to(device)

        return AuditSet(self.images.to(device), move(self.labels), move(self.saliency), move(self.has_saliency))

    def state_dict(self) -> dict[str, Optional[Tensor]]:
        return {
            "images": self.images,
            "labels": self.labels,
            "saliency": self.saliency,
            "has_saliency": self.has_saliency,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Optional[Tensor]]) -> AuditSet:
        images = state["images"]
        if images is None:
            raise ValueError("An AuditSet state needs its 'images' tensor; got None.")
        return cls(images, state.get("labels"), state.get("saliency"), state.get("has_saliency"))

    @classmethod
    def from_batches(
        cls, batches: Iterable[Any], size: int, keys: BatchKeys = BatchKeys(), need_label: bool = False
    ) -> AuditSet:
        """The first ``size`` samples of an iterable of batches (dicts or tuples);
        ``need_label``: a batch without class-index labels is an error."""
        parts: list[AuditSet] = []
        total = 0
        for batch in batches:
            part = split_batch(batch, keys, need_label)
            parts.append(part)
            total += len(part)
            if total >= size:
                break
        if not parts:
            raise ValueError("CAMAudit found no samples for its audit set: the validation data (or dataset) is empty.")
        return _concat(parts).slice(0, size)

    @classmethod
    def from_dataset(
        cls, dataset: Dataset[Any], size: int, keys: BatchKeys = BatchKeys(), need_label: bool = False
    ) -> AuditSet:
        """The first ``size`` items of a map-style dataset, collated like a DataLoader does."""
        n = min(size, len(dataset))  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("CAMAudit's audit dataset is empty.")
        return split_batch(default_collate([dataset[i] for i in range(n)]), keys, need_label)


def split_batch(batch: Any, keys: BatchKeys = BatchKeys(), need_label: bool = False) -> AuditSet:
    """A dict batch (``keys``) or an ``(x, y[, saliency], ...)`` tuple as an ``AuditSet`` on the CPU.
    ``need_label`` (``cam_class="label"``): a missing label or one that is no class index is
    an error, never a silent switch to explaining the prediction."""
    if isinstance(batch, Mapping):
        if keys.image not in batch:
            raise KeyError(
                f"CAMAudit: the batch has no image key {keys.image!r}; its keys are {', '.join(map(str, batch))}. "
                "Pass CAMAudit(image_key=...) or yield (x, y, ...) tuples."
            )
        image, label = batch[keys.image], batch.get(keys.label)
        saliency, has = batch.get(keys.saliency), batch.get(keys.has_saliency)
        where = f"the batch's {keys.label!r} (its keys: {', '.join(map(str, batch))}; CAMAudit(label_key=...) names another)"
    elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        image = batch[0]
        label = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        saliency = batch[2] if len(batch) > 2 and isinstance(batch[2], Tensor) else None
        has = None
        where = f"the batch's second element (a {type(batch).__name__} of {len(batch)})"
    elif isinstance(batch, Tensor):
        image, label, saliency, has = batch, None, None, None
        where = "the batch (a bare image tensor, no label)"
    else:
        raise TypeError(
            f"CAMAudit needs dict batches with {keys.image!r} (and {keys.label!r}, optional {keys.saliency!r}) "
            f"or (x, y, ...) tuples; got {type(batch).__name__}."
        )
    if not isinstance(image, Tensor) or image.dim() != 4:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"CAMAudit: images must be [B, C, H, W]; got {shape}.")
    b = image.shape[0]
    label = _labels(label, b)
    if need_label and (label is None or isinstance(label, str)):
        problem = "is missing" if label is None else label
        raise ValueError(
            f"CAMAudit(cam_class='label'): {where} {problem}. Give integer class indices (or integral floats, "
            "or one-hot rows), or use cam_class='prediction' to explain the predicted class."
        )
    if isinstance(label, str):
        label = None  # not class indices (e.g. a regression target): only cam_class='prediction' runs
    if saliency is not None:
        saliency = saliency.detach().float().cpu()
        if saliency.dim() == 4 and saliency.shape[1] == 1:
            saliency = saliency[:, 0]
        if saliency.dim() != 3 or saliency.shape[0] != b:
            raise ValueError(
                f"CAMAudit: saliency maps must be [B, H, W]; got {tuple(saliency.shape)} for a batch of {b}."
            )
        has = torch.ones(b, dtype=torch.bool) if has is None else torch.as_tensor(has).bool().reshape(-1).cpu()
    else:
        has = None
    return AuditSet(image.detach().float().cpu().clone(), label, saliency, has)


def _labels(label: Any, batch: int) -> Union[str, Tensor, None]:
    """Class indices ``[B]``; ``None`` when there is no label; a string saying why when the
    label is no class index (a non-integral float, soft labels, the wrong length)."""
    if label is None:
        return None
    label = torch.as_tensor(label).detach().cpu()
    if label.dim() == 2 and label.shape[1] > 1:  # one-hot rows
        hot = label.amax(dim=1) == 1
        if not bool((hot & ((label == 0) | (label == 1)).all(dim=1) & ((label == 1).sum(dim=1) == 1)).all()):
            return f"holds {tuple(label.shape)} rows that are not one-hot (soft labels?)"
        label = label.argmax(dim=1)
    label = label.reshape(-1)
    if label.numel() != batch:
        return f"holds {label.numel()} values for a batch of {batch} images"
    if label.dtype == torch.bool or label.dtype.is_complex:
        return f"has dtype {label.dtype}"
    if label.dtype.is_floating_point:
        bad = ~(torch.isfinite(label) & (label == label.round()) & (label >= 0))
        if bool(bad.any()):
            return f"holds floats that are no class indices (e.g. {label[bad][:3].tolist()})"
    indices: Tensor = label.long()
    return indices


def _concat(parts: list[AuditSet]) -> AuditSet:
    def cat(name: str) -> Optional[Tensor]:
        values = [getattr(p, name) for p in parts]
        if any(v is None for v in values):
            return None
        return torch.cat(values)

    return AuditSet(torch.cat([p.images for p in parts]), cat("labels"), cat("saliency"), cat("has_saliency"))

"""``SaliencyClassifier``: joint cross-entropy + CAM saliency loss on any timm model.

One forward pass serves both terms: ``CAMEngine.compute(..., create_graph=True)`` returns
the logits (for CE) and the CAM, which stays differentiable because the gradient to the
target layer was taken with ``torch.autograd.grad(create_graph=True)``. Lightning's
automatic optimisation then runs one ordinary ``loss.backward()`` (which is also what
DDP's reducer expects). With ``saliency_weight=0`` no CAM is computed while training and
the step is exactly a plain CE step.

The saliency target is the batch's human map (``saliency_target="human"``; samples
without one are left out of the term and counted) or a SHAM on the CAM grid
(``"sham"``: passive fooling, paper sec. 3.2).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy

from ..cams import GRADIENT_METHODS, CAMEngine, get_method
from ..saliency import PAPER_ENTROPY, SHAM_PATTERNS, cam_entropy, saliency_loss, saliency_mse, sham_target
from .backbones import build_backbone

Batch = Union[dict[str, Tensor], tuple, list]

# saliency_target -> fn(model, batch dict, cam grid) -> (target maps, mask of samples that have one)
SaliencyTargetFn = Callable[["SaliencyClassifier", dict, tuple[int, int]], tuple[Tensor, Tensor]]
SALIENCY_TARGETS: dict[str, SaliencyTargetFn] = {}

# cam_class -> fn(labels) -> targets for the engine (None = the predicted class)
CAM_CLASSES: dict[str, Callable[[Tensor], Optional[Tensor]]] = {
    "label": lambda labels: labels,
    "prediction": lambda labels: None,
}


def register_saliency_target(name: str) -> Callable[[SaliencyTargetFn], SaliencyTargetFn]:
    def decorator(fn: SaliencyTargetFn) -> SaliencyTargetFn:
        SALIENCY_TARGETS[name] = fn
        return fn

    return decorator


@register_saliency_target("human")
def _human_target(module: "SaliencyClassifier", batch: dict, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    x = batch["image"]
    sal = batch.get("saliency")
    if sal is None:
        return torch.zeros(x.shape[0], *grid, device=x.device), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    has = batch.get("has_saliency")
    mask = torch.ones(x.shape[0], dtype=torch.bool, device=x.device) if has is None else has.bool().to(x.device)
    return sal, mask


@register_saliency_target("sham")
def _sham_target(module: "SaliencyClassifier", batch: dict, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    x = batch["image"]
    sham = module.sham(grid).to(x.device)
    return sham.expand(x.shape[0], *grid), torch.ones(x.shape[0], dtype=torch.bool, device=x.device)


def as_dict_batch(batch: Batch) -> dict[str, Any]:
    """Dict batches pass through; ``(x, y[, saliency])`` tuples become dicts."""
    if isinstance(batch, dict):
        if "image" not in batch or "label" not in batch:
            raise KeyError(f"A dict batch needs keys 'image' and 'label'; got {', '.join(batch)}.")
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        out = {"image": batch[0], "label": batch[1]}
        if len(batch) >= 3 and isinstance(batch[2], Tensor):
            out["saliency"] = batch[2]
        return out
    raise TypeError(f"Batches must be dicts with 'image' and 'label' or (x, y, ...) tuples; got {type(batch).__name__}.")


class SaliencyClassifier(LightningModule):
    """Image classifier trained with CE + MSE between its CAM and a target saliency map.

    Args:
        model_name: any timm model name (``timm.list_models()``).
        num_classes: linked from ``data.num_classes`` by the ``diffcam`` CLI.
        pretrained: load timm's pretrained weights (needs the hub or its cache).
        weights_file: a local weights file (state dict / safetensors) loaded through timm.
        model_kwargs: extra ``timm.create_model`` arguments (e.g. ``output_stride: 8``).
        target_layer: dotted CAM layer name; ``None`` picks it automatically.
        saliency_target: ``human`` (the batch's maps) or ``sham``.
        saliency_method: the CAM the loss shapes: any gradient method of ``METHODS``, or a
            list of them (the saliency term is then the mean of each method's MSE to the
            target, all from the one forward and one batched VJP: a joint attack).
        cam_class: explain the true ``label`` (default) or the ``prediction``.
        sham_entropy, sham_pattern: the SHAM (nats; ``border``, ``corner``, ...).
        ce_weight, saliency_weight: the joint loss ``ce_weight*CE + saliency_weight*MSE``.
        optimizer: an ``OptimizerCallable``; default SGD(lr=0.002, momentum=0.9) as in the paper.
        scheduler: an optional ``LRSchedulerCallable``.
    """

    def __init__(
        self,
        model_name: str = "test_resnet",
        num_classes: int = 7,
        pretrained: bool = False,
        weights_file: Optional[str] = None,
        model_kwargs: Optional[dict[str, Any]] = None,
        target_layer: Optional[str] = None,
        saliency_target: str = "human",
        saliency_method: Union[str, list[str]] = "gradcam",
        cam_class: str = "label",
        sham_entropy: float = PAPER_ENTROPY,
        sham_pattern: str = "border",
        ce_weight: float = 1.0,
        saliency_weight: float = 1.0,
        optimizer: Optional[OptimizerCallable] = None,
        scheduler: Optional[LRSchedulerCallable] = None,
    ) -> None:
        super().__init__()
        _check_choice("saliency_target", saliency_target, SALIENCY_TARGETS)
        _check_choice("cam_class", cam_class, CAM_CLASSES)
        _check_choice("sham_pattern", sham_pattern, SHAM_PATTERNS)
        methods = _saliency_methods(saliency_method)
        if ce_weight < 0 or saliency_weight < 0:
            raise ValueError(f"ce_weight and saliency_weight must be >= 0; got {ce_weight}, {saliency_weight}.")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.model = build_backbone(model_name, num_classes, pretrained, weights_file, model_kwargs)
        self.engine = CAMEngine(self.model, target_layer)
        self.saliency_methods = methods
        self.saliency_method = methods[0]  # the map ``predict_step`` returns
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.acc = torch.nn.ModuleDict(
            {f"{s}_acc": MulticlassAccuracy(num_classes=num_classes, average="micro") for s in ("train", "val", "test")}
        )
        self._shams: dict[tuple[int, int], Tensor] = {}

    # ------------------------------------------------------------------ helpers
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def sham(self, grid: tuple[int, int]) -> Tensor:
        """The SHAM on a CAM grid ``(h, w)`` (cached)."""
        key = tuple(int(g) for g in grid)
        if key not in self._shams:
            sham = sham_target(key, self.hparams.sham_entropy, self.hparams.sham_pattern)
            if sham.min() == sham.max():
                rank_zero_warn(
                    f"The SHAM ({self.hparams.sham_entropy} nats) covers every pixel of the {key[0]}x{key[1]} CAM "
                    "grid, so after min-max normalisation it is no target at all. Use a larger grid (bigger "
                    "images, or model_kwargs: {output_stride: 8}) or a lower sham_entropy."
                )
            self._shams[key] = sham
        return self._shams[key]

    def cams(self, x: Tensor, labels: Optional[Tensor] = None, create_graph: bool = False):
        """One forward: ``CAMResult`` with the saliency methods' maps and the logits."""
        targets = CAM_CLASSES[self.hparams.cam_class](labels) if labels is not None else None
        return self.engine.compute(x, targets=targets, methods=self.saliency_methods, create_graph=create_graph)

    # ------------------------------------------------------------------ steps
    def _step(self, batch: Batch, stage: str) -> Tensor:
        batch = as_dict_batch(batch)
        x, y = batch["image"], batch["label"]
        hp = self.hparams
        train = stage == "train"
        use_cam = not train or hp.saliency_weight > 0
        if use_cam:
            result = self.cams(x, y, create_graph=train)
            logits, cams = result.logits, [result.maps[m] for m in self.saliency_methods]
        else:  # exactly a plain CE step
            logits, cams = self.model(x), []
        ce = F.cross_entropy(logits, y)
        loss = hp.ce_weight * ce
        logs = {"ce": ce.detach()}
        if cams:
            grid = tuple(cams[0].shape[-2:])
            target, mask = SALIENCY_TARGETS[hp.saliency_target](self, batch, grid)
            terms = [saliency_loss(cam, target, mask) for cam in cams]
            sal, count = torch.stack([t for t, _ in terms]).mean(), terms[0][1]
            loss = loss + hp.saliency_weight * sal  # val/test report the same joint objective
            logs["saliency_mse"] = sal.detach()
            logs["saliency_missing"] = torch.tensor(float(x.shape[0] - count), device=x.device)
            logs["cam_entropy"] = torch.stack([cam_entropy(c.detach()).mean() for c in cams]).mean()
            logs["sham_mse"] = torch.stack([saliency_mse(c.detach(), self.sham(grid)).mean() for c in cams]).mean()
        logs["loss"] = loss.detach()
        self.acc[f"{stage}_acc"](logits.detach().argmax(dim=1), y)
        batch_size = x.shape[0]
        for name, value in logs.items():
            self.log(
                f"{stage}/{name}", value, on_step=train and name == "loss", on_epoch=True,
                prog_bar=name == "loss", sync_dist=True, batch_size=batch_size,
                reduce_fx="sum" if name == "saliency_missing" else "mean",
            )
        self.log(f"{stage}/acc", self.acc[f"{stage}_acc"], on_epoch=True, prog_bar=True, batch_size=batch_size)
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        x = as_dict_batch(batch)["image"] if not isinstance(batch, Tensor) else batch
        result = self.engine.compute(x, targets=None, methods=(self.saliency_method,))
        probs = result.logits.softmax(dim=1)
        return {"pred": probs.argmax(dim=1), "probs": probs, "cam": result.maps[self.saliency_method]}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer_factory is None:
            optimizer = torch.optim.SGD(params, lr=0.002, momentum=0.9)
        else:
            optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        config = {"scheduler": scheduler}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}


def _saliency_methods(saliency_method: Union[str, Sequence[str]]) -> tuple[str, ...]:
    """Canonical names of the trained method(s), each with a gradient to train through."""
    names = [saliency_method] if isinstance(saliency_method, str) else list(saliency_method)
    if not names:
        raise ValueError(f"saliency_method is an empty list; give one or more of: {', '.join(GRADIENT_METHODS)}.")
    for name in names:
        if get_method(name).name not in GRADIENT_METHODS:
            raise ValueError(
                f"saliency_method {name!r} has no gradient to train through; valid: {', '.join(GRADIENT_METHODS)}."
            )
    return tuple(dict.fromkeys(get_method(n).name for n in names))


def _check_choice(key: str, value: str, choices: dict) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {key} {value!r}; valid: {', '.join(choices)}.")

"""``SaliencyClassifier``: joint cross-entropy + CAM saliency loss on any network.

The network comes from the one resolver of model sources (:mod:`.sources`): a timm or
torchvision name, a class path, or an ``nn.Module``. Initial weights (``pretrained``,
``weights_file``) are loaded here, where training starts; a saved checkpoint records
that they are already in its state dict, so it loads without them.

One forward pass serves both terms: ``CAMEngine.compute(..., create_graph=True)`` returns
the logits (for CE) and the CAM, which stays differentiable because the gradient to the
target layer was taken with ``torch.autograd.grad(create_graph=True)``. Lightning's
automatic optimisation then runs one ordinary ``loss.backward()`` (which is also what
DDP's reducer expects). With ``saliency_weight=0`` no CAM is computed while training and
the step is exactly a plain CE step.

The saliency target is the batch's human map (``saliency_target="human"``; samples
without one are left out of the term and counted) or a SHAM on the CAM grid
(``"sham"``: passive fooling, paper sec. 3.2).

What the loss's maps are: in training the model is in train mode, so a BatchNorm after a
non-final ``target_layer`` (e.g. ``layer3`` of a ResNet) uses batch statistics. The loss
then uses exact per-image maps of that training forward (one VJP row per image, about B
times the backward from the logits to the layer; ``CAMEngine`` warns once); the forward's
batch statistics still couple the images, as they do for the CE term.
``batch_coupling="batched"`` keeps one shared VJP instead (measured on ResNet-18 at
``layer3``, 112 px: a training step 1.7x / 2.7x / 4.9x faster at B = 4 / 8 / 16, maps
30-78% off the per-image ones; ``benchmarks/bench_coupling.py``). Validation and the
audit run in eval mode (running statistics): per-image maps by construction. With the
default, final CAM layer nothing but pooling and the classifier follows it: no coupling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Union, cast

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.types import LRSchedulerConfigType, OptimizerLRScheduler
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from ..cams import GRADIENT_METHODS, CAMEngine, CAMResult, method_names
from ..cams.classes import CAM_CLASSES, CamClass
from ..cams.coupling import BatchCoupling
from ..cams.outputs import logits_of
from ..errors import check_choice
from ..registry import Registry
from ..saliency import (
    PAPER_ENTROPY,
    SHAM_PATTERNS,
    cam_entropy,
    saliency_loss,
    saliency_mse,
    sham_target,
    whole_grid_note,
)
from .attention import disable_fused_attention
from .sources import CHECKPOINT_KEY, load_model

Batch = Union[dict[str, Tensor], tuple[Tensor, ...], list[Tensor]]


# saliency_target -> fn(model, batch dict, cam grid) -> (target maps, mask of samples that have one)
SaliencyTargetFn = Callable[["SaliencyClassifier", dict[str, Any], tuple[int, int]], tuple[Tensor, Tensor]]
SALIENCY_TARGETS: Registry[str, SaliencyTargetFn] = Registry("saliency_target")


def register_saliency_target(name: str, *, replace: bool = False) -> Callable[[SaliencyTargetFn], SaliencyTargetFn]:
    """Register ``fn(module, batch, grid) -> (targets [B, h, w], mask [B])`` as a
    ``saliency_target``; a taken name is refused unless ``replace``."""
    return SALIENCY_TARGETS.decorator(name, replace=replace)


@register_saliency_target("human")
def _human_target(module: SaliencyClassifier, batch: dict[str, Any], grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    x = batch["image"]
    sal = batch.get("saliency")
    if sal is None:
        return torch.zeros(x.shape[0], *grid, device=x.device), torch.zeros(
            x.shape[0], dtype=torch.bool, device=x.device
        )
    has = batch.get("has_saliency")
    mask = torch.ones(x.shape[0], dtype=torch.bool, device=x.device) if has is None else has.bool().to(x.device)
    return sal, mask


@register_saliency_target("sham")
def _sham_target(module: SaliencyClassifier, batch: dict[str, Any], grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
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
    raise TypeError(
        f"Batches must be dicts with 'image' and 'label' or (x, y, ...) tuples; got {type(batch).__name__}."
    )


class SaliencyClassifier(LightningModule):
    """Image classifier trained with CE + MSE between its CAM and a target saliency map.

    One forward serves both terms (see the module docstring), so a saliency-supervised or
    SHAM-fooled model trains at about the cost of a plain one; ``saliency_weight=0`` is
    exactly a plain CE step.

    Args:
        model_name: a model source: a timm name, ``torchvision:NAME``, or a class/factory
            path ``package.module.Name`` (see :func:`~diffcam_lightning.models.sources.load_model`).
        num_classes: linked from ``data.num_classes`` by the ``diffcam`` CLI.
        pretrained: load the source's pretrained weights (needs the hub or its cache).
        weights_file: a local weights file (state dict, safetensors or a Lightning checkpoint).
        model_kwargs: extra arguments of the network's constructor (e.g. ``output_stride: 8``).
        network: an ``nn.Module`` to train instead of ``model_name`` (an instance in Python,
            ``class_path``/``init_args`` in a config).
        class_names: the classes' names, stored in checkpoints (linked from ``data.classes``).
        target_layer: dotted CAM layer name; ``None`` picks it automatically.
        layout: the CAM layer's layout (``nchw``, ``nhwc``, ``tokens``, ``tokens:P``; ``None`` = detected).
        output_key: where the logits are in the network's output, if not found by itself.
        saliency_target: ``human`` (the batch's maps) or ``sham``; a name of
            ``SALIENCY_TARGETS`` (open: ``register_saliency_target`` adds one, so a str).
        saliency_method: the CAM the loss shapes: any gradient method of ``METHODS``, or a
            list of them (the saliency term is then the mean of each method's MSE to the
            target, all from the one forward and one batched VJP: a joint attack).
        cam_class: explain the true ``label`` (default) or the ``prediction``.
        sham_entropy: the SHAM's entropy in nats (the paper's 3.35 by default).
        sham_pattern: where the SHAM lies: ``border``, ``corner``, ``patch``, ``random`` or a
            pattern added with ``saliency.register_pattern`` (an open choice, so a str).
        ce_weight: the weight of CE in the joint loss ``ce_weight*CE + saliency_weight*MSE``.
        saliency_weight: the weight of the saliency MSE in it.
        optimizer: an ``OptimizerCallable``; default SGD(lr=0.002, momentum=0.9) as in the paper.
        scheduler: an optional ``LRSchedulerCallable``.
        batch_coupling: ``exact`` (default) or ``batched``: the CAM's gradients when a
            BatchNorm in train mode follows ``target_layer`` (see the module docstring).

    Attributes:
        model: the network being trained.
        engine: the :class:`~diffcam_lightning.CAMEngine` on ``model`` that computes the maps.
        saliency_methods: the canonical names of the trained CAM methods.
        saliency_method: the first of them, the map ``predict_step`` returns.

    Raises:
        ValueError: an unknown choice (the message lists the valid ones), a method with no
            gradient to train through, a negative weight, or ``class_names`` of another length
            than ``num_classes``; an unknown model source names close matches.

    Example:
        >>> import torch
        >>> from diffcam_lightning import SaliencyClassifier
        >>> module = SaliencyClassifier("test_resnet", num_classes=3, model_kwargs={"output_stride": 8},
        ...                             saliency_target="sham", saliency_method=["gradcam", "GradCAM++"])
        >>> module.saliency_methods, module.engine.target_layer
        (('gradcam', 'gradcam++'), 'layer4')
        >>> out = module.predict_step(torch.rand(2, 3, 32, 32), batch_idx=0)
        >>> out["pred"].shape, out["cam"].shape
        (torch.Size([2]), torch.Size([2, 4, 4]))
        >>> module.sham((4, 4)).shape
        torch.Size([4, 4])
    """

    def __init__(
        self,
        model_name: str = "test_resnet",
        num_classes: int = 7,
        pretrained: bool = False,
        weights_file: Optional[str] = None,
        model_kwargs: Optional[dict[str, Any]] = None,
        network: Optional[nn.Module] = None,
        class_names: Optional[list[str]] = None,
        target_layer: Optional[str] = None,
        layout: Optional[str] = None,
        output_key: Optional[Union[int, str]] = None,
        saliency_target: str = "human",
        saliency_method: Union[str, list[str]] = "gradcam",
        cam_class: CamClass = "label",
        sham_entropy: float = PAPER_ENTROPY,
        sham_pattern: str = "border",
        ce_weight: float = 1.0,
        saliency_weight: float = 1.0,
        optimizer: Optional[OptimizerCallable] = None,
        scheduler: Optional[LRSchedulerCallable] = None,
        batch_coupling: BatchCoupling = "exact",
    ) -> None:
        super().__init__()
        _check_choices(saliency_target=saliency_target, cam_class=cam_class, sham_pattern=sham_pattern)
        self.saliency_methods = method_names(saliency_method, among=GRADIENT_METHODS, option=_TRAINED_METHODS)
        self.saliency_method = self.saliency_methods[0]  # the map ``predict_step`` returns
        _check_weights(ce_weight, saliency_weight)
        _check_class_names(class_names, num_classes)
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "network"])
        self.model = _build_network(
            network if network is not None else model_name, num_classes, pretrained, weights_file, model_kwargs
        )
        if saliency_weight > 0:
            disable_fused_attention(self.model)  # the CAM loss needs attention's double backward
        self.engine = CAMEngine(
            self.model, target_layer, layout=layout, output_key=output_key, batch_coupling=batch_coupling
        )
        self._network_class = (
            f"{type(network).__module__}.{type(network).__qualname__}" if network is not None else None
        )
        self._output_key = output_key
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.acc = torch.nn.ModuleDict(
            {f"{s}_acc": MulticlassAccuracy(num_classes=num_classes, average="micro") for s in ("train", "val", "test")}
        )
        self._shams: dict[tuple[int, int], Tensor] = {}

    # ------------------------------------------------------------------ helpers
    @override
    def forward(self, x: Tensor) -> Tensor:
        """The logits, whatever form the network returns them in (tuple, dict, ``.logits``)."""
        return logits_of(self.model(x), key=self._output_key)

    def sham(self, grid: tuple[int, int]) -> Tensor:
        """The SHAM on a CAM grid ``(h, w)`` (cached)."""
        key = (int(grid[0]), int(grid[1]))
        if key not in self._shams:
            sham = sham_target(key, self.hparams["sham_entropy"], self.hparams["sham_pattern"])
            note = whole_grid_note(sham, self.hparams["sham_entropy"])
            if note is not None:
                rank_zero_warn(
                    f"The {note}: the saliency loss has nothing to match. Use a larger grid (bigger images, or "
                    "model_kwargs: {output_stride: 8}) or a lower sham_entropy."
                )
            self._shams[key] = sham
        return self._shams[key]

    def cams(self, x: Tensor, labels: Optional[Tensor] = None, create_graph: bool = False) -> CAMResult:
        """One forward: ``CAMResult`` with the saliency methods' maps and the logits."""
        targets = CAM_CLASSES[self.hparams["cam_class"]](labels)
        return self.engine.compute(x, targets=targets, methods=self.saliency_methods, create_graph=create_graph)

    # ------------------------------------------------------------------ steps
    def _step(self, batch: Batch, stage: str) -> Tensor:
        batch = as_dict_batch(batch)
        x, y = batch["image"], batch["label"]
        hp = self.hparams
        train = stage == "train"
        use_cam = not train or hp["saliency_weight"] > 0
        if use_cam:
            result = self.cams(x, y, create_graph=train)
            logits, cams = result.logits, [result.maps[m] for m in self.saliency_methods]
        else:  # exactly a plain CE step
            logits, cams = self(x), []
        ce = F.cross_entropy(logits, y)
        loss: Tensor = hp["ce_weight"] * ce
        logs = {"ce": ce.detach()}
        if cams:
            h, w = cams[0].shape[-2:]
            grid = (h, w)
            target, mask = SALIENCY_TARGETS[hp["saliency_target"]](self, batch, grid)
            terms = [saliency_loss(cam, target, mask) for cam in cams]
            sal, count = torch.stack([t for t, _ in terms]).mean(), terms[0][1]
            loss = loss + hp["saliency_weight"] * sal  # val/test report the same joint objective
            logs["saliency_mse"] = sal.detach()
            logs["saliency_missing"] = torch.tensor(float(x.shape[0] - count), device=x.device)
            logs["cam_entropy"] = torch.stack([cam_entropy(c.detach()).mean() for c in cams]).mean()
            logs["sham_mse"] = torch.stack([saliency_mse(c.detach(), self.sham(grid)).mean() for c in cams]).mean()
        logs["loss"] = loss.detach()
        self.acc[f"{stage}_acc"](logits.detach().argmax(dim=1), y)
        batch_size = x.shape[0]
        for name, value in logs.items():
            self.log(
                f"{stage}/{name}",
                value,
                on_step=train and name == "loss",
                on_epoch=True,
                prog_bar=name == "loss",
                sync_dist=True,
                batch_size=batch_size,
                reduce_fx="sum" if name == "saliency_missing" else "mean",
            )
        accuracy = cast(MulticlassAccuracy, self.acc[f"{stage}_acc"])  # a ModuleDict's items are typed as Module
        self.log(f"{stage}/acc", accuracy, on_epoch=True, prog_bar=True, batch_size=batch_size)
        return loss

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    @override
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    @override
    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "test")

    @override
    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        x = as_dict_batch(batch)["image"] if not isinstance(batch, Tensor) else batch
        result = self.engine.compute(x, targets=None, methods=(self.saliency_method,))
        probs = result.logits.softmax(dim=1)
        return {"pred": probs.argmax(dim=1), "probs": probs, "cam": result.maps[self.saliency_method]}

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Make the checkpoint self-contained: the initial weights are in its state dict,
        so loading it must not read the weights file or the hub again."""
        hparams = dict(checkpoint.get("hyper_parameters", {}))
        initial = hparams.get("weights_file") or ("pretrained" if hparams.get("pretrained") else None)
        hparams.update(weights_file=None, pretrained=False)
        if self._network_class:  # rebuilt by class path with no arguments, or pass network= on load
            hparams.update(model_name=self._network_class, model_kwargs=None)
        checkpoint["hyper_parameters"] = hparams
        checkpoint[CHECKPOINT_KEY] = {
            "class_names": self.hparams.get("class_names"),
            "target_layer": self.engine.target_layer,
            "layout": self.engine.last_layout.spec if self.engine.last_layout else self.hparams.get("layout"),
            "initial_weights": initial,
        }

    # ------------------------------------------------------------------ optimisation
    @override
    def configure_optimizers(self) -> OptimizerLRScheduler:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer_factory is None:
            optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=0.002, momentum=0.9)
        else:
            optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        config: LRSchedulerConfigType = {"scheduler": scheduler}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}


# how method_names names the option in its messages: the reason a method may be refused
_TRAINED_METHODS = "saliency_method (a CAM with a gradient to train through)"


def _check_choices(**choices: str) -> None:
    """Each closed choice against its registry (Python callers are not held to the Literal)."""
    registries: dict[str, Mapping[str, Any]] = {
        "saliency_target": SALIENCY_TARGETS,
        "cam_class": CAM_CLASSES,
        "sham_pattern": SHAM_PATTERNS,
    }
    for option, value in choices.items():
        check_choice(option, value, registries[option])


def _check_weights(ce_weight: float, saliency_weight: float) -> None:
    if ce_weight < 0 or saliency_weight < 0:
        raise ValueError(f"ce_weight and saliency_weight must be >= 0; got {ce_weight}, {saliency_weight}.")


def _check_class_names(class_names: Optional[Sequence[str]], num_classes: int) -> None:
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}.")


def _build_network(
    source: Union[str, nn.Module],
    num_classes: int,
    pretrained: bool,
    weights_file: Optional[str],
    model_kwargs: Optional[dict[str, Any]],
) -> nn.Module:
    """The network of ``source`` with its initial weights (the one resolver of model sources)."""
    return load_model(source, num_classes, pretrained=pretrained, weights=weights_file, model_kwargs=model_kwargs).model

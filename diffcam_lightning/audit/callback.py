"""``CAMAudit``: a Lightning callback that audits a model's CAMs every validation epoch.

On a fixed audit set it computes, with one ``CAMEngine`` call per audit batch for all
methods, the drift of each DiffGradCAM variant from its base, CAM entropy, MSE to a SHAM,
susceptibility against a reference model, localisation against saliency maps (when the
data has them), behavioural signals (``behaviour.py``: does each map point where the
model's output responds?) and an alarm with a verdict (fooled / imprecise); scalars go
through ``pl_module.log`` under ``cam_audit/``, image grids to every logger
(``sinks.py``). It never changes training: see ``guard.py``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Optional, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from ..cams import DIFF_BASES, METHODS, CAMEngine, get_method
from ..cams.layers import known_layer_name
from ..cams.metrics import check_metrics, check_options
from ..cams.outputs import logits_of
from ..saliency import PAPER_ENTROPY, SHAM_PATTERNS, sham_target
from . import review
from .alarm import (
    BEHAVIOUR_GATE,
    DEFAULT_DRIFT_THRESHOLD,
    DEFAULT_SHAM_THRESHOLD,
    VERDICTS,
    AlarmRule,
    build_rules,
    evaluate,
    verdict,
)
from .auditset import AuditSet, BatchKeys
from .behaviour import BehaviourOptions, behaviour_keys, behaviour_scores
from .faithfulness import faithfulness_keys, faithfulness_scores
from .guard import audit_guard, preserved_rng
from .metrics import SCORE_FAMILIES, AuditScores, ScoreContext, Scores, score_batch, score_keys
from .reference import WeightsSwap, load_reference_state
from .render import audit_grid
from .signals import AuditMaps, set_signals
from .sinks import AuditPicture, publish

DEFAULT_METHODS: tuple[str, ...] = (
    "gradcam",
    "gradcam++",
    "eigencam",
    "meandiffgradcam",
    "maxdiffgradcam",
    "lsediffgradcam",
    "meandiffgradcam++",
    "maxdiffgradcam++",
    "lsediffgradcam++",
)

# Defaults of the fooling alarm, measured on the embedded synthetic data (benchmarks/README.md,
# "Alarm thresholds"; `python benchmarks/bench_audit.py thresholds`): clean (human-target)
# models drift <= 0.0001 after their first epoch (0.077 at init, 0.091 after one epoch in a
# smaller setting) with GradCAM-to-SHAM MSE >= 0.43; SHAM-trained models pass drift 0.1 within
# 1-4 epochs and end at drift 0.30-0.38, SHAM MSE 0.005-0.007.
# (defined beside the other rules in alarm.py: DEFAULT_DRIFT_THRESHOLD = DEFAULT_SHAM_THRESHOLD = 0.1)

# The behavioural signals (behaviour.py) run on the first DEFAULT_BEHAVIOUR_SIZE audit images:
# their no-grad forwards are most of the audit's cost (benchmarks/README.md, "Audit overhead").
DEFAULT_BEHAVIOUR_SIZE = 16
DECIDED = BEHAVIOUR_GATE[0]  # share of the behaviour images predicted as the explained class (the rules' gate)

ModelSpec = Union[None, str, Callable[[LightningModule], nn.Module]]

# cam_class -> which class each audit image is explained for (None = the prediction)
CAM_CLASSES: dict[str, Callable[[AuditSet], Optional[Tensor]]] = {
    "label": lambda s: s.labels,
    "prediction": lambda s: None,
}


def default_drift_pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    """Each DiffGradCAM variant in ``methods`` paired with its base, when the base is there."""
    return [(m, DIFF_BASES[m]) for m in methods if m in DIFF_BASES and DIFF_BASES[m] in methods]


def _class_names(pl_module: LightningModule) -> Optional[Sequence[str]]:
    """The module's class names when it states them (``SaliencyClassifier``: ``hparams.class_names``)."""
    names = getattr(pl_module, "class_names", None) or getattr(pl_module, "hparams", {}).get("class_names")
    return list(names) if names else None


def _row_labels(explained: Tensor, predicted: Tensor, names: Optional[Sequence[str]]) -> list[str]:
    """Each grid row's label: the class its maps explain and the model's prediction."""

    def name(c: int) -> str:
        return f"{c} {names[c]}" if names is not None and 0 <= c < len(names) else str(c)

    return [f"explained: {name(e)}\npredicted: {name(p)}" for e, p in zip(explained.tolist(), predicted.tolist())]


class CAMAudit(Callback):
    """Audits CAMs on a fixed set of images at the end of validation epochs.

    Args:
        methods: CAM methods to compute (names of ``METHODS``; scorecam is costly, opt-in).
        audit_size: number of audit images (the first ones of the validation data).
        every_n_epochs: audit every n-th training epoch (``trainer.validate`` always audits).
        target_layer: dotted layer name of the audited model; ``None`` = automatic.
        model: the classifier inside the LightningModule when its ``forward`` does not
            return logits: a dotted attribute name (``"model"``) or ``fn(pl_module)``.
        drift_pairs: ``(variant, base)`` pairs; ``None`` = each DiffGradCAM with its base.
        sham_entropy, sham_pattern: the SHAM the maps are compared with (paper: 3.35, border).
        reference: ``"start"`` (the model when fitting starts), a checkpoint path, or ``None``.
        log_images: log image grids to every logger (PNG files without an image API); ``grid_images`` rows.
        drift_threshold, sham_threshold: the paper's two alarm rules: the drift of
            ``alarm_pair`` exceeds ``drift_threshold``, or the SHAM MSE of ``alarm_pair[1]``
            falls below ``sham_threshold`` (``None`` disables a rule).
        alarm_rules: ``{rule: threshold}`` for the other rules of ``audit.alarm.ALARM_RULES``
            (e.g. ``dependence``); ``None`` disables one, a threshold enables the opt-in ``deletion_gap``.
        cam_class: explain the true ``label`` (default) or the ``prediction``.
        dataset: a map-style dataset to take the audit set from instead of the val data.
        batch_size: audit images per engine call.
        audit_sanity_check, audit_fast_dev_run: also audit in those runs (off by default).
        image_key, label_key, saliency_key: the keys of dict batches.
        prefix: the namespace of the logged names.
        metrics: opt-in faithfulness / localisation metrics of each method's maps (names of
            ``diffcam_lightning.cams.metrics.METRICS``, e.g. ``["deletion", "insertion"]``),
            logged as ``<prefix>/<metric>/<method>``; each costs extra no-grad forwards.
        metric_options: keyword options of those metrics (``steps``, ``batch_size``, ...).
        behaviour: compute the behavioural signals (``behaviour.py``: agreement with an
            occlusion reference, deletion gap against random regions, plausibility gap
            against the annotations) and judge the behavioural alarm rules; they need no
            reference and no training history, so a one-shot ``trainer.validate`` judges
            a finished model.
        behaviour_size: the first audit images the behavioural signals run on (their
            no-grad forwards are most of the audit's cost).
        behaviour_options: ``BehaviourOptions`` fields (``occlusion_grid``, ``fraction``,
            ``random_regions``, ``batch_size``).
    """

    def __init__(
        self,
        methods: Sequence[str] = DEFAULT_METHODS,
        audit_size: int = 64,
        every_n_epochs: int = 1,
        target_layer: Optional[str] = None,
        model: ModelSpec = None,
        drift_pairs: Optional[Sequence[Sequence[str]]] = None,
        sham_entropy: float = PAPER_ENTROPY,
        sham_pattern: str = "border",
        reference: Optional[str] = "start",
        log_images: bool = True,
        grid_images: int = 8,
        drift_threshold: Optional[float] = DEFAULT_DRIFT_THRESHOLD,
        sham_threshold: Optional[float] = DEFAULT_SHAM_THRESHOLD,
        alarm_pair: Sequence[str] = ("meandiffgradcam", "gradcam"),
        alarm_rules: Optional[dict[str, Optional[float]]] = None,
        cam_class: str = "label",
        dataset: Optional[Any] = None,
        batch_size: int = 32,
        audit_sanity_check: bool = False,
        audit_fast_dev_run: bool = False,
        image_key: str = "image",
        label_key: str = "label",
        saliency_key: str = "saliency",
        prefix: str = "cam_audit",
        metrics: Sequence[str] = (),
        metric_options: Optional[dict[str, Any]] = None,
        behaviour: bool = True,
        behaviour_size: int = DEFAULT_BEHAVIOUR_SIZE,
        behaviour_options: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.methods = [get_method(m).name for m in ([methods] if isinstance(methods, str) else methods)]
        if not self.methods:
            raise ValueError(f"CAMAudit needs at least one method; valid: {', '.join(METHODS)}.")
        self.methods = list(dict.fromkeys(self.methods))
        for key, value in (
            ("audit_size", audit_size),
            ("every_n_epochs", every_n_epochs),
            ("batch_size", batch_size),
            ("behaviour_size", behaviour_size),
        ):
            if int(value) < 1:
                raise ValueError(f"CAMAudit {key} must be >= 1; got {value}.")
        if cam_class not in CAM_CLASSES:
            raise ValueError(f"Unknown CAMAudit cam_class {cam_class!r}; valid: {', '.join(CAM_CLASSES)}.")
        if sham_pattern not in SHAM_PATTERNS:
            raise ValueError(f"Unknown CAMAudit sham_pattern {sham_pattern!r}; valid: {', '.join(SHAM_PATTERNS)}.")
        if grid_images < 0:
            raise ValueError(f"CAMAudit grid_images must be >= 0; got {grid_images}.")
        pairs = default_drift_pairs(self.methods) if drift_pairs is None else [tuple(p) for p in drift_pairs]
        for pair in pairs:
            if len(pair) != 2:
                raise ValueError(f"CAMAudit drift_pairs entries must be (variant, base); got {pair!r}.")
        self.drift_pairs = [(get_method(v).name, get_method(b).name) for v, b in pairs]
        for v, b in self.drift_pairs:
            for name in (v, b):
                if name not in self.methods:
                    raise ValueError(
                        f"CAMAudit drift pair ({v}, {b}) uses {name!r}, which is not among methods {self.methods}."
                    )
        self.alarm_pair = (get_method(alarm_pair[0]).name, get_method(alarm_pair[1]).name)
        self.audit_size = int(audit_size)
        self.every_n_epochs = int(every_n_epochs)
        self.target_layer = target_layer
        self.model_spec = model
        self.sham_entropy = float(sham_entropy)
        self.sham_pattern = sham_pattern
        self.reference = None if reference in (None, "none", "None") else str(reference)
        self.log_images = bool(log_images)
        self.grid_images = int(grid_images)
        self.drift_threshold = drift_threshold
        self.sham_threshold = sham_threshold
        self.rules: list[AlarmRule] = build_rules(alarm_rules, self.alarm_pair, drift_threshold, sham_threshold)
        self.cam_class = cam_class
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.audit_sanity_check = bool(audit_sanity_check)
        self.audit_fast_dev_run = bool(audit_fast_dev_run)
        self.keys = BatchKeys(image=image_key, label=label_key, saliency=saliency_key)
        self.prefix = prefix
        self.metrics = check_metrics(metrics)
        self.metric_options = dict(metric_options or {})
        check_options(self.metrics, self.metric_options)
        self.behaviour = bool(behaviour)
        self.behaviour_size = int(behaviour_size)
        try:
            self.behaviour_options = BehaviourOptions(**(behaviour_options or {}))
        except TypeError as err:
            fields = ", ".join(BehaviourOptions.__dataclass_fields__)
            raise ValueError(f"CAMAudit behaviour_options: {err}; valid keys: {fields}.") from None
        self.verdict: Optional[str] = None
        # state (saved in checkpoints)
        self.audit_set: Optional[AuditSet] = None
        self.reference_maps: Optional[dict[str, Tensor]] = None
        # runtime (rebuilt in each process)
        self._engine: Optional[CAMEngine] = None
        self._metric: Optional[AuditScores] = None
        self._maps: Optional[AuditMaps] = None
        self.last_metrics: dict[str, float] = {}
        self.alarm: bool = False
        self._whole_grid_warned: set[tuple[int, int]] = set()
        self.first_alarm_epoch: Optional[int] = None  # of the current fit (TensorBoard's HParams metric)
        self._layouts_written: set[str] = set()  # TensorBoard log dirs holding the Custom Scalars layout

    # ------------------------------------------------------------------ Lightning plumbing
    @property
    def state_key(self) -> str:
        return self._generate_state_key(methods=self.methods, audit_size=self.audit_size, prefix=self.prefix)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_engine"] = None  # holds the model; rebuilt after pickling (ddp_spawn)
        return state

    def state_dict(self) -> dict[str, Any]:
        if self.audit_set is None:
            return {}
        return {
            "version": 1,
            "audit_set": self.audit_set.state_dict(),
            "reference_maps": self.reference_maps,
            "methods": list(self.methods),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        self.audit_set = AuditSet.from_state_dict(state_dict["audit_set"])
        self.reference_maps = state_dict.get("reference_maps")
        missing = [m for m in self.methods if self.reference is not None and m not in (self.reference_maps or {})]
        if missing and self.reference_maps is not None:
            rank_zero_warn(
                f"CAMAudit: the checkpoint has no reference maps for {missing}; their susceptibility is not logged."
            )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The HParams tab's experiment with the audit's metrics, before Lightning logs its own (``review.py``)."""
        self.first_alarm_epoch = None
        if not trainer.is_global_zero:
            return
        params = dict(pl_module.hparams_initial)
        datamodule = getattr(trainer, "datamodule", None)  # set by Lightning, not declared on Trainer
        if datamodule is not None:
            params.update(datamodule.hparams_initial)
        params.pop("_class_path", None)
        for logger in review.tensorboard_loggers(trainer.loggers):
            review.write_hparams(logger, params, self.prefix)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The first epoch an alarm fired (``-1``: none), an HParams metric."""
        if trainer.is_global_zero:
            epoch = review.NO_ALARM if self.first_alarm_epoch is None else self.first_alarm_epoch
            for logger in trainer.loggers:
                logger.log_metrics({f"{self.prefix}/first_alarm_epoch": float(epoch)}, step=trainer.global_step)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fix the audit set and the reference maps before the first optimiser step."""
        if self._skipped(trainer):
            return
        self._prepare(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._due(trainer):
            return
        self._prepare(trainer, pl_module)
        values, grid_maps = self._audit(trainer, pl_module)
        self._report(trainer, pl_module, values, grid_maps)

    # ------------------------------------------------------------------ decisions
    def _skipped(self, trainer: Trainer) -> bool:
        if trainer.sanity_checking and not self.audit_sanity_check:
            return True
        return bool(getattr(trainer, "fast_dev_run", False)) and not self.audit_fast_dev_run  # not declared on Trainer

    def _due(self, trainer: Trainer) -> bool:
        if self._skipped(trainer):
            return False
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    # ------------------------------------------------------------------ set-up
    def classifier(self, pl_module: LightningModule) -> nn.Module:
        """The module whose forward returns logits (``model`` argument, else the pl_module)."""
        spec = self.model_spec
        if spec is None:
            return pl_module
        if callable(spec):
            found = spec(pl_module)
        else:
            try:
                found = operator.attrgetter(spec)(pl_module)
            except AttributeError:
                children = ", ".join(n for n, _ in pl_module.named_children())
                raise AttributeError(
                    f"CAMAudit model={spec!r}: {type(pl_module).__name__} has no such attribute; its modules: {children}."
                ) from None
        if not isinstance(found, nn.Module):
            raise TypeError(f"CAMAudit model={spec!r} must give an nn.Module; got {type(found).__name__}.")
        return found

    def _layer_spec(self, model: nn.Module) -> Union[str, nn.Module, None]:
        """Automatic layer: the layer of a ``CAMEngine`` the module already uses (what it
        trains through), else a known family's layer found in any submodule, else the
        engine's own search."""
        if self.target_layer is not None:
            return self.target_layer
        inside = {id(m) for m in model.modules()}
        for value in vars(model).values():
            if isinstance(value, CAMEngine) and value.layer is not None and id(value.layer[1]) in inside:
                return value.layer[1]
        for name, sub in model.named_modules():
            found = known_layer_name(sub)
            if found is not None:
                return f"{name}.{found}" if name else found
        return None

    def _prepare(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # validate/test hooks run under inference mode: nothing kept may be an inference tensor
        with torch.inference_mode(False):
            self._prepare_state(trainer, pl_module)

    def _prepare_state(self, trainer: Trainer, pl_module: LightningModule) -> None:
        model = self.classifier(pl_module)
        if self._engine is None or self._engine.model is not model:
            self._engine = CAMEngine(model, self._layer_spec(model))
        if self.audit_set is None:
            self.audit_set = self._collect(trainer)
        if self.reference_maps is None and self.reference is not None:
            self.reference_maps = self._reference_maps(pl_module, model)
        if self._metric is None:
            keys = score_keys(self.methods, self.drift_pairs, "mean") + faithfulness_keys(self.metrics, self.methods)
            keys += ([*behaviour_keys(self.methods), DECIDED]) if self.behaviour else []
            self._metric = AuditScores(keys, score_keys(self.methods, self.drift_pairs, "sum"))
        self._metric = self._metric.to(pl_module.device)
        self._maps = (self._maps or AuditMaps(self.methods)).to(pl_module.device)

    def _collect(self, trainer: Trainer) -> AuditSet:
        """The first ``audit_size`` samples of the dataset, or of the raw (unsharded)
        validation dataloader, so every rank holds the same set."""
        with preserved_rng(), torch.inference_mode(False):
            if self.dataset is not None:
                return AuditSet.from_dataset(self.dataset, self.audit_size, self.keys, self.cam_class == "label")
            return AuditSet.from_batches(
                self._val_loader(trainer), self.audit_size, self.keys, self.cam_class == "label"
            )

    @staticmethod
    def _val_loader(trainer: Trainer) -> Iterable[Any]:
        loop = (
            trainer.validate_loop if trainer.state.fn == TrainerFn.VALIDATING else trainer.fit_loop.epoch_loop.val_loop
        )
        source = getattr(loop, "_data_source", None)
        loader = None
        if source is not None and source.is_defined() and source.instance is not None:
            loader = source.dataloader()
        if loader is None:
            loader = trainer.val_dataloaders
        if isinstance(loader, (list, tuple)):
            loader = loader[0] if loader else None
        elif isinstance(loader, dict):
            loader = next(iter(loader.values()), None)
        if loader is None:
            raise ValueError(
                "CAMAudit needs validation data for its audit set: give the Trainer val_dataloaders "
                "(or a DataModule with val_dataloader), or pass CAMAudit(dataset=...)."
            )
        batches: Iterable[Any] = loader
        return batches

    def _reference_maps(self, pl_module: LightningModule, model: nn.Module) -> dict[str, Tensor]:
        assert self.audit_set is not None and self._engine is not None
        if self.reference == "start":
            engine = self._engine
        else:
            prefix = next((n for n, m in pl_module.named_modules() if m is model), "")
            assert self.reference is not None  # _prepare asks for reference maps only with a reference
            state = load_reference_state(self.reference, model, prefix)
            if self._engine.layer is None:  # automatic search: resolve it on the live model first
                with audit_guard(model, pl_module.device):
                    self._engine.resolve_layer(self._input(self.audit_set.images[:1], model, pl_module.device))
            assert self._engine.layer is not None
            engine = CAMEngine(WeightsSwap(model, state), self._engine.layer[1])
        out: dict[str, list[Tensor]] = {m: [] for m in self.methods}
        device = pl_module.device
        with audit_guard(model, device):
            for batch in self.audit_set.batches(self.batch_size):
                maps = engine(self._input(batch.images, model, device), self._targets(batch, device), self.methods)
                for m in self.methods:
                    out[m].append(maps[m].detach().cpu())
        return {m: torch.cat(v) for m, v in out.items()}

    # ------------------------------------------------------------------ the audit
    def _targets(self, batch: AuditSet, device: torch.device) -> Optional[Tensor]:
        targets = CAM_CLASSES[self.cam_class](batch)
        return None if targets is None else targets.to(device)

    @staticmethod
    def _input(images: Tensor, model: nn.Module, device: torch.device) -> Tensor:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        return images.to(device=device, dtype=dtype)

    def _audit(self, trainer: Trainer, pl_module: LightningModule) -> tuple[dict[str, float], Optional[dict[str, Any]]]:
        assert self.audit_set is not None and self._engine is not None and self._metric is not None
        assert self._maps is not None
        model, device = self._engine.model, pl_module.device
        per = -(-len(self.audit_set) // max(trainer.world_size, 1))
        start = min(trainer.global_rank * per, len(self.audit_set))
        stop = min(start + per, len(self.audit_set))
        sham: Optional[Tensor] = None
        grid_maps: Optional[dict[str, Any]] = None
        want_grid = self.log_images and self.grid_images > 0 and trainer.is_global_zero
        with audit_guard(model, device):
            self._metric.reset()
            self._maps.reset()
            for lo in range(start, stop, self.batch_size):
                hi = min(lo + self.batch_size, stop)
                batch = self.audit_set.slice(lo, hi).to(device)
                images = self._input(batch.images, model, device)
                result = self._engine.compute(images, self._targets(batch, device), self.methods)
                maps = result.maps
                if sham is None:
                    any_map = next(iter(maps.values()))
                    sham = self._sham((any_map.shape[-2], any_map.shape[-1])).to(device)
                reference = {m: r[lo:hi].to(device) for m, r in (self.reference_maps or {}).items() if m in maps}
                usable = None if sham.min() == sham.max() else sham  # a whole-grid SHAM is no target
                ctx = ScoreContext(maps, usable, reference, self.drift_pairs, batch.saliency, batch.has_saliency)
                self._metric.update(score_batch(ctx, list(SCORE_FAMILIES)))
                if self.metrics:
                    self._metric.update(
                        faithfulness_scores(
                            model,
                            images,
                            maps,
                            result.targets,
                            self.metrics,
                            batch.saliency,
                            batch.has_saliency,
                            self.metric_options,
                            self._engine,
                        )
                    )
                if self.behaviour and lo < self.behaviour_size:
                    k = min(hi, self.behaviour_size) - lo
                    self._metric.update(self._behaviour(model, images[:k], result, batch, k, lo))
                self._maps.update(maps)
                if want_grid and grid_maps is None:
                    n = min(self.grid_images, hi - lo)
                    grid_maps = {
                        "images": batch.images[:n].cpu(),
                        "saliency": None if batch.saliency is None else batch.saliency[:n].cpu(),
                        "maps": {m: torch.nan_to_num(v[:n], nan=0.0).cpu() for m, v in maps.items()},
                        "explained": result.targets[:n].cpu(),
                        "predicted": result.logits.argmax(dim=1)[:n].cpu(),
                    }
            values = {k: float(v) for k, v in self._metric.compute().items()}  # synced across ranks
            values.update(set_signals(self._maps.compute(), self.methods))
        return values, grid_maps

    def _behaviour(self, model: nn.Module, images: Tensor, result: Any, batch: AuditSet, k: int, offset: int) -> Scores:
        """The behavioural scores of the first ``k`` images of a batch (audit index ``offset``
        on), each averaged over the images the model decides: predicted as the explained
        class with probability >= 0.5 (a map of an undecided model has nothing to be faithful to)."""
        targets = result.targets[:k]
        probs = result.logits[:k].detach().float().softmax(dim=1)
        decided = (probs.argmax(dim=1) == targets) & (probs.gather(1, targets[:, None]).squeeze(1) >= 0.5)
        saliency = None if batch.saliency is None else batch.saliency[:k]
        has = None if batch.has_saliency is None else batch.has_saliency[:k]
        maps = {m: v[:k].detach() for m, v in result.maps.items()}
        engine = self._engine
        assert engine is not None

        def logits(x: Tensor) -> Tensor:  # the engine's reading of the model's output (tuples, dicts, .logits)
            return logits_of(model(x), engine._width, engine.output_key)

        scores, _ = behaviour_scores(logits, images, targets, maps, self.behaviour_options, saliency, has, offset)
        out = {key: (v, decided if mask is None else mask.bool() & decided) for key, (v, mask) in scores.items()}
        out[DECIDED] = (decided.float(), None)
        return out

    def _sham(self, grid: tuple[int, int]) -> Tensor:
        """The SHAM on the CAM grid; warns once per grid when it covers every pixel (after
        min-max it is all zeros: no SHAM MSE is logged and the SHAM rule is off)."""
        sham = sham_target(grid, self.sham_entropy, self.sham_pattern)
        if sham.min() == sham.max() and grid not in self._whole_grid_warned:
            self._whole_grid_warned.add(grid)
            rank_zero_warn(
                f"CAMAudit: the SHAM ({self.sham_entropy} nats, {int(sham.sum())} pixels) covers the whole "
                f"{grid[0]}x{grid[1]} CAM grid, so after min-max normalisation it is no target: sham_mse is not "
                "logged and the alarm's SHAM rule is off. Use larger images, a finer CAM layer or a lower sham_entropy."
            )
        return sham

    def _nan_notes(self, values: dict[str, float]) -> list[str]:
        """What the non-finite scores of this audit left out, and which alarm rules they silenced."""
        assert self._metric is not None
        excluded = self._metric.excluded
        if not excluded:
            return []
        by_count: dict[int, list[str]] = {}
        for key, value in values.items():
            if key.startswith("nan/") and value > 0:
                by_count.setdefault(int(value), []).append(key.split("/", 1)[1])
        total = len(self.audit_set) if self.audit_set is not None else "?"
        notes = [f"{n} of {total} audit images gave NaN or infinite maps ({', '.join(m)})" for n, m in by_count.items()]
        notes.append("left out of the means: " + ", ".join(f"{k} ({n})" for k, n in excluded.items()))
        for rule in self.rules:
            prefix = f"{rule.signal}/"
            if any(k.startswith(prefix) for k in excluded) and not any(k.startswith(prefix) for k in values):
                notes.append(f"the alarm's {rule.name} rule could not be evaluated (no finite {rule.signal} score)")
        return notes

    def _alarm(self, values: dict[str, float]) -> tuple[dict[str, float], dict[str, list[str]], Optional[str]]:
        """``alarm/<rule>`` flags (1.0 for each rule that fired on any method), ``verdict/<v>``
        flags, the messages of the (rule, method) pairs that fired by verdict, and the
        verdict (``alarm.py``), from one evaluation of the rules."""
        firings = evaluate(values, self.rules)
        fired = {f.rule for f in firings}
        found = verdict(firings)
        flags = {f"alarm/{r.name}": float(r.name in fired) for r in self.rules}
        flags.update({f"verdict/{v}": float(v == found) for v in VERDICTS})
        reasons = {v: [f.message() for f in firings if f.verdict == v] for v in VERDICTS}
        return flags, reasons, found

    def _report(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        values: dict[str, float],
        grid_maps: Optional[dict[str, Any]],
    ) -> None:
        flags, by_verdict, found = self._alarm(values)
        reasons = by_verdict["fooled"]
        alarm = found == "fooled"
        notes = self._nan_notes(values)
        if notes:
            rank_zero_warn(f"CAMAudit at epoch {trainer.current_epoch}: " + "; ".join(notes) + ".")
        values = {**values, **flags, "alarm": float(alarm)}
        self.last_metrics, self.alarm, self.verdict = values, alarm, found
        for key, value in values.items():
            pl_module.log(
                f"{self.prefix}/{key}",
                torch.tensor(value, device=pl_module.device),
                on_step=False,
                on_epoch=True,
                sync_dist=True,
                batch_size=1,
            )
        message = (
            f"CAMAudit fooling alarm at epoch {trainer.current_epoch} (step {trainer.global_step}): "
            + "; ".join(reasons)
            + ". Verdict: fooled: the audited CAMs may be passively fooled "
            "(docs/audit-detection.md: 'What the audit can and cannot detect')."
        )
        if alarm:
            rank_zero_warn(message)
            if trainer.state.fn == TrainerFn.FITTING and self.first_alarm_epoch is None:
                self.first_alarm_epoch = trainer.current_epoch
        elif found == "imprecise":
            rank_zero_warn(
                f"CAMAudit at epoch {trainer.current_epoch} (step {trainer.global_step}): "
                + "; ".join(by_verdict["imprecise"])
                + ". Verdict: imprecise, not fooled: the maps' top regions "
                "matter to the decision but the maps are coarse or off by a region (docs/audit-detection.md)."
            )
        if trainer.is_global_zero:
            self._review(trainer, values, message if alarm else None)
        if grid_maps is not None and trainer.is_global_zero:
            labels = _row_labels(grid_maps["explained"], grid_maps["predicted"], _class_names(pl_module))
            grid, titles = audit_grid(grid_maps["images"], grid_maps["maps"], grid_maps["saliency"], row_labels=labels)
            picture = AuditPicture(grid, titles, self.prefix, trainer.current_epoch, trainer.global_step)
            publish(picture, trainer.loggers, trainer.default_root_dir)  # not trainer.log_dir: it broadcasts

    def _review(self, trainer: Trainer, values: dict[str, float], alarm_message: Optional[str]) -> None:
        """TensorBoard's Custom Scalars layout (once per log dir) and the alarm's Text entry."""
        for logger in review.tensorboard_loggers(trainer.loggers):
            if logger.log_dir not in self._layouts_written:
                self._layouts_written.add(logger.log_dir)
                review.write_layout(logger, values, self.prefix)
            if alarm_message is not None:
                review.write_alarm_message(logger, self.prefix, alarm_message, trainer.global_step)

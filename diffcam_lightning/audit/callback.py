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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union, get_args

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from ..cams import DIFF_BASES, CAMEngine, CAMResult, method_names
from ..cams.classes import CAM_CLASSES, CamClass
from ..cams.layers import known_layer_name
from ..cams.metrics import check_metrics, check_options
from ..cams.outputs import classifier_width, logits_of
from ..errors import check_choice
from ..saliency import PAPER_ENTROPY, SHAM_PATTERNS, sham_target, whole_grid_note
from . import review
from .alarm import (
    BEHAVIOUR_GATE,
    DEFAULT_DRIFT_THRESHOLD,
    DEFAULT_SHAM_THRESHOLD,
    VERDICTS,
    AlarmRule,
    Verdict,
    build_rules,
    fire_rules,
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
DEFAULT_ALARM_PAIR: tuple[str, str] = ("meandiffgradcam", "gradcam")  # (variant, base) of the paper's two rules

# Defaults of the fooling alarm, measured on the embedded synthetic data (benchmarks/README.md,
# "Alarm thresholds"; `python benchmarks/bench_audit.py thresholds`): clean (human-target)
# models drift <= 0.0001 after their first epoch (0.077 at init, 0.091 after one epoch in a
# smaller setting) with GradCAM-to-SHAM MSE >= 0.43; SHAM-trained models pass drift 0.1 within
# 1-4 epochs and end at drift 0.30-0.38, SHAM MSE 0.005-0.007.
# (defined beside the other rules in alarm.py: DEFAULT_DRIFT_THRESHOLD = DEFAULT_SHAM_THRESHOLD = 0.1)

# The behavioural signals (behaviour.py) run on the first DEFAULT_BEHAVIOUR_SIZE audit images:
# their no-grad forwards are most of the audit's cost (benchmarks/README.md, "Audit overhead").
DEFAULT_BEHAVIOUR_SIZE = 16
STATE_VERSION = 1  # of the callback's checkpointed state; load_state_dict reads older ones too
DECIDED = BEHAVIOUR_GATE[0]  # share of the behaviour images predicted as the explained class (the rules' gate)

ModelSpec = Union[None, str, Callable[[LightningModule], nn.Module]]


def default_drift_pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    """Each DiffGradCAM variant in ``methods`` paired with its base, when the base is there."""
    return [(m, DIFF_BASES[m]) for m in methods if m in DIFF_BASES and DIFF_BASES[m] in methods]


def _row_labels(explained: Tensor, predicted: Tensor, names: Optional[Sequence[str]]) -> list[str]:
    """Each grid row's label: the class its maps explain and the model's prediction."""

    def name(c: int) -> str:
        return f"{c} {names[c]}" if names is not None and 0 <= c < len(names) else str(c)

    return [f"explained: {name(e)}\npredicted: {name(p)}" for e, p in zip(explained.tolist(), predicted.tolist())]


@dataclass(frozen=True)
class GridRows:
    """The first audit images of rank 0, on the CPU, for the picture (``render.audit_grid``)."""

    images: Tensor
    saliency: Optional[Tensor]
    maps: dict[str, Tensor]
    explained: Tensor
    predicted: Tensor

    @classmethod
    def of(cls, batch: AuditSet, result: CAMResult, n: int) -> GridRows:
        return cls(
            images=batch.images[:n].cpu(),
            saliency=None if batch.saliency is None else batch.saliency[:n].cpu(),
            maps={m: torch.nan_to_num(v[:n], nan=0.0).cpu() for m, v in result.maps.items()},
            explained=result.targets[:n].cpu(),
            predicted=result.logits.argmax(dim=1)[:n].cpu(),
        )


def _checked_options(metrics: Sequence[str], options: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    checked = dict(options or {})
    check_options(metrics, checked)
    return checked


def _behaviour_options(options: Optional[Mapping[str, Any]]) -> BehaviourOptions:
    try:
        return BehaviourOptions(**(options or {}))
    except TypeError as err:
        fields = ", ".join(BehaviourOptions.__dataclass_fields__)
        raise ValueError(f"CAMAudit behaviour_options: {err}; valid keys: {fields}.") from None


class CAMAudit(Callback):
    """Audits CAMs on a fixed set of images at the end of validation epochs.

    A passively fooled model keeps its accuracy while its CAMs stop showing what its
    decision uses, so the audit watches the maps themselves: on the same audit images every
    epoch it logs each method's drift, SHAM distance, susceptibility, localisation and
    behavioural agreement under ``<prefix>/``, judges the alarm rules
    (``audit.alarm.ALARM_RULES``) into a verdict, and sends an image grid to every logger.
    It never changes training (modes, RNG and gradients are restored: ``guard.py``).

    Args:
        methods: CAM methods to compute (names of ``METHODS``; scorecam is costly, opt-in).
        audit_size: number of audit images (the first ones of the validation data).
        every_n_epochs: audit every n-th training epoch (``trainer.validate`` always audits).
        target_layer: dotted layer name of the audited model; ``None`` = automatic.
        model: the classifier inside the LightningModule when its ``forward`` does not
            return logits: a dotted attribute name (``"model"``) or ``fn(pl_module)``.
        drift_pairs: ``(variant, base)`` pairs; ``None`` = each DiffGradCAM with its base.
        sham_entropy: the entropy in nats of the SHAM the maps are compared with (paper: 3.35).
        sham_pattern: the SHAM's pattern (``saliency.SHAM_PATTERNS``, paper: ``"border"``;
            a ``str``, not a ``Literal``: ``register_pattern`` adds patterns).
        reference: ``"start"`` (the model when fitting starts), a checkpoint path, or ``None``.
        log_images: log image grids to every logger (PNG files without an image API).
        grid_images: audit images (rows) in each grid.
        drift_threshold: the paper's drift rule: the drift of ``alarm_pair`` exceeds it
            (``None`` disables the rule).
        sham_threshold: the paper's SHAM rule: the SHAM MSE of ``alarm_pair[1]`` falls
            below it (``None`` disables the rule).
        alarm_pair: the ``(variant, base)`` the two paper rules look at.
        alarm_rules: ``{rule: threshold}`` for the other rules of ``audit.alarm.ALARM_RULES``
            (e.g. ``dependence``); ``None`` disables one, a threshold enables the opt-in ``deletion_gap``.
        cam_class: explain the true ``label`` (default) or the ``prediction``.
        dataset: a map-style dataset to take the audit set from instead of the val data.
        batch_size: audit images per engine call.
        audit_sanity_check: also audit in the sanity check (off by default).
        audit_fast_dev_run: also audit in ``fast_dev_run`` runs (off by default).
        image_key: the image's key in dict batches.
        label_key: the label's key in dict batches.
        saliency_key: the saliency map's key in dict batches.
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
        class_names: the classes' names for the grid's row labels; ``None``: the module's
            ``hparams["class_names"]`` when it has them (``SaliencyClassifier`` does).

    Attributes:
        methods: the audited methods, canonical names in order.
        drift_pairs: the ``(variant, base)`` pairs whose drift is logged.
        rules: the active alarm rules (``AlarmRule``), thresholds applied.
        last_metrics: ``{name: value}`` of the last audit, without ``prefix``; empty before it.
        alarm: whether the last audit's verdict was ``"fooled"``.
        verdict: the last audit's verdict: ``"fooled"``, ``"imprecise"`` or ``None``.
        first_alarm_epoch: the first epoch of the current fit whose verdict was ``"fooled"``.
        audit_set: the audit images (``AuditSet``, saved in checkpoints); ``None`` before the first audit.
        reference_maps: ``{method: maps}`` at the reference model (saved in checkpoints).

    Raises:
        ValueError: an unknown method, metric, alarm rule, ``cam_class`` or ``sham_pattern``;
            a size below 1; a drift pair outside ``methods``; bad ``behaviour_options``.

    Example:
        >>> import lightning as L
        >>> from diffcam_lightning import CAMAudit, SaliencyClassifier, SyntheticDataModule
        >>> audit = CAMAudit(
        ...     methods=["gradcam", "meandiffgradcam"], audit_size=4, target_layer="model.layer2", log_images=False
        ... )
        >>> audit.drift_pairs, [rule.name for rule in audit.rules]
        ([('meandiffgradcam', 'gradcam')], ['dependence', 'drift', 'sham', 'plausibility_gap', 'behaviour_agreement'])
        >>> trainer = L.Trainer(
        ...     callbacks=[audit], logger=False, limit_val_batches=1, enable_progress_bar=False, enable_model_summary=False
        ... )
        >>> data = SyntheticDataModule(val_size=4, batch_size=4)
        >>> _ = trainer.validate(SaliencyClassifier(), data, verbose=False)
        >>> sorted(k for k in audit.last_metrics if k.startswith(("drift/", "sham_mse/")))
        ['drift/meandiffgradcam', 'sham_mse/gradcam', 'sham_mse/meandiffgradcam']
        >>> audit.verdict in (None, "imprecise", "fooled") and audit.alarm == (audit.verdict == "fooled")
        True
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
        alarm_pair: Sequence[str] = DEFAULT_ALARM_PAIR,
        alarm_rules: Optional[dict[str, Optional[float]]] = None,
        cam_class: CamClass = "label",
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
        class_names: Optional[Sequence[str]] = None,
    ) -> None:
        super().__init__()
        self.methods = list(method_names(methods, option="CAMAudit methods"))
        self.audit_size = int(audit_size)
        self.every_n_epochs = int(every_n_epochs)
        self.target_layer, self.model_spec = target_layer, model
        self.sham_entropy = float(sham_entropy)
        self.sham_pattern = sham_pattern
        self.reference = None if reference in (None, "none", "None") else str(reference)
        self.log_images = bool(log_images)
        self.grid_images = int(grid_images)
        self.drift_threshold, self.sham_threshold = drift_threshold, sham_threshold
        self.cam_class = cam_class
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.audit_sanity_check, self.audit_fast_dev_run = bool(audit_sanity_check), bool(audit_fast_dev_run)
        self.keys = BatchKeys(image=image_key, label=label_key, saliency=saliency_key)
        self.prefix = prefix
        self.behaviour, self.behaviour_size = bool(behaviour), int(behaviour_size)
        self.class_names = None if class_names is None else list(class_names)
        self._validate_init()
        self.drift_pairs = self._init_drift_pairs(drift_pairs)
        self.alarm_pair = (method_names(alarm_pair[0])[0], method_names(alarm_pair[1])[0])
        self.rules: list[AlarmRule] = build_rules(alarm_rules, self.alarm_pair, drift_threshold, sham_threshold)
        self.metrics = check_metrics(metrics)  # faithfulness metric names (public: a constructor argument)
        self.metric_options = _checked_options(self.metrics, metric_options)
        self.behaviour_options = _behaviour_options(behaviour_options)
        self._init_state()

    def _validate_init(self) -> None:
        """The sizes and choices ``__init__`` stored (Python callers pass anything)."""
        sizes = {
            "audit_size": self.audit_size,
            "every_n_epochs": self.every_n_epochs,
            "batch_size": self.batch_size,
            "behaviour_size": self.behaviour_size,
        }
        for key, value in sizes.items():
            if value < 1:
                raise ValueError(f"CAMAudit {key} must be >= 1; got {value}.")
        check_choice("cam_class", self.cam_class, get_args(CamClass), owner="CAMAudit")
        check_choice("sham_pattern", self.sham_pattern, SHAM_PATTERNS, owner="CAMAudit")
        if self.grid_images < 0:
            raise ValueError(f"CAMAudit grid_images must be >= 0; got {self.grid_images}.")

    def _init_drift_pairs(self, drift_pairs: Optional[Sequence[Sequence[str]]]) -> list[tuple[str, str]]:
        """Each pair as canonical ``(variant, base)`` names, both among ``methods``."""
        pairs = default_drift_pairs(self.methods) if drift_pairs is None else [tuple(p) for p in drift_pairs]
        for pair in pairs:
            if len(pair) != 2:
                raise ValueError(f"CAMAudit drift_pairs entries must be (variant, base); got {pair!r}.")
        named = [(method_names(v)[0], method_names(b)[0]) for v, b in pairs]
        for v, b in named:
            for name in (v, b):
                if name not in self.methods:
                    raise ValueError(
                        f"CAMAudit drift pair ({v}, {b}) uses {name!r}, which is not among methods {self.methods}."
                    )
        return named

    def _init_state(self) -> None:
        """What the audits fill in: results, checkpointed state and per-process runtime."""
        self.verdict: Optional[Verdict] = None
        self.last_metrics: dict[str, float] = {}
        self.alarm: bool = False
        self.first_alarm_epoch: Optional[int] = None  # of the current fit (TensorBoard's HParams metric)
        # state (saved in checkpoints)
        self.audit_set: Optional[AuditSet] = None
        self.reference_maps: Optional[dict[str, Tensor]] = None
        # runtime (rebuilt in each process)
        self._engine: Optional[CAMEngine] = None
        self._scores: Optional[AuditScores] = None  # the per-image score means (torchmetrics)
        self._set_maps: Optional[AuditMaps] = None  # the whole set's maps, for the set-level signals
        self._shams: dict[tuple[int, int], Optional[Tensor]] = {}  # CAM grid -> its SHAM (None: whole grid)
        self._layouts_written: set[str] = set()  # TensorBoard log dirs holding the Custom Scalars layout

    # ------------------------------------------------------------------ Lightning plumbing
    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(methods=self.methods, audit_size=self.audit_size, prefix=self.prefix)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_engine"] = None  # holds the model; rebuilt after pickling (ddp_spawn)
        return state

    @override
    def state_dict(self) -> dict[str, Any]:
        if self.audit_set is None:
            return {}
        return {
            "version": STATE_VERSION,
            "audit_set": self.audit_set.state_dict(),
            "reference_maps": self.reference_maps,
            "methods": list(self.methods),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Reads every key with a default, so an older or partial state (no ``version``,
        no ``reference_maps``, no audit set yet) loads: what is missing is rebuilt."""
        audit_set = state_dict.get("audit_set")
        if audit_set is None:  # saved before the first audit (or an empty state): nothing fixed yet
            return
        self.audit_set = AuditSet.from_state_dict(audit_set)
        self.reference_maps = state_dict.get("reference_maps")
        missing = [m for m in self.methods if self.reference is not None and m not in (self.reference_maps or {})]
        if missing and self.reference_maps is not None:
            rank_zero_warn(
                f"CAMAudit: the checkpoint has no reference maps for {missing}; their susceptibility is not logged."
            )

    @override
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

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The first epoch an alarm fired (``-1``: none), an HParams metric."""
        if trainer.is_global_zero:
            epoch = review.NO_ALARM if self.first_alarm_epoch is None else self.first_alarm_epoch
            for logger in trainer.loggers:
                logger.log_metrics({f"{self.prefix}/first_alarm_epoch": float(epoch)}, step=trainer.global_step)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fix the audit set and the reference maps before the first optimiser step."""
        if self._skipped(trainer):
            return
        self._prepare(trainer, pl_module)

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._due(trainer):
            return
        self._prepare(trainer, pl_module)
        values, grid_rows = self._audit(trainer, pl_module)
        self._report(trainer, pl_module, values, grid_rows)

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
        if self._scores is None:
            keys = score_keys(self.methods, self.drift_pairs, "mean") + faithfulness_keys(self.metrics, self.methods)
            keys += ([*behaviour_keys(self.methods), DECIDED]) if self.behaviour else []
            self._scores = AuditScores(keys, score_keys(self.methods, self.drift_pairs, "sum"))
        self._scores = self._scores.to(pl_module.device)
        self._set_maps = (self._set_maps or AuditMaps(self.methods)).to(pl_module.device)

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
        targets = CAM_CLASSES[self.cam_class](batch.labels)
        return None if targets is None else targets.to(device)

    @staticmethod
    def _input(images: Tensor, model: nn.Module, device: torch.device) -> Tensor:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        return images.to(device=device, dtype=dtype)

    def _audit(self, trainer: Trainer, pl_module: LightningModule) -> tuple[dict[str, float], Optional[GridRows]]:
        """This rank's shard of the audit set, batch by batch; figures synced across ranks."""
        assert self.audit_set is not None and self._engine is not None
        assert self._scores is not None and self._set_maps is not None
        model, device = self._engine.model, pl_module.device
        start, stop = self.audit_set.shard_bounds(trainer.global_rank, trainer.world_size)
        grid_rows: Optional[GridRows] = None
        want_grid = self.log_images and self.grid_images > 0 and trainer.is_global_zero
        with audit_guard(model, device):
            self._scores.reset()
            self._set_maps.reset()
            for lo in range(start, stop, self.batch_size):
                batch = self.audit_set.slice(lo, min(lo + self.batch_size, stop)).to(device)
                images = self._input(batch.images, model, device)
                result = self._engine.compute(images, self._targets(batch, device), self.methods)
                for scores in self._batch_scores(model, images, result, batch, lo):
                    self._scores.update(scores)
                self._set_maps.update(result.maps)
                if want_grid and grid_rows is None:
                    grid_rows = GridRows.of(batch, result, min(self.grid_images, len(batch)))
            values = {k: float(v) for k, v in self._scores.compute().items()}  # synced across ranks
            values.update(set_signals(self._set_maps.compute(), self.methods))
        return values, grid_rows

    def _batch_scores(
        self, model: nn.Module, images: Tensor, result: CAMResult, batch: AuditSet, lo: int
    ) -> list[Scores]:
        """The per-image scores of one audit batch (audit index ``lo`` on), one part per
        source: the registered families, the opt-in metrics and, on the first
        ``behaviour_size`` images, the behavioural signals."""
        maps = result.maps
        any_map = next(iter(maps.values()))
        sham = self._usable_sham((int(any_map.shape[-2]), int(any_map.shape[-1])))
        hi = lo + len(batch)
        reference = {m: r[lo:hi].to(images.device) for m, r in (self.reference_maps or {}).items() if m in maps}
        ctx = ScoreContext(
            maps,
            None if sham is None else sham.to(images.device),
            reference,
            self.drift_pairs,
            batch.saliency,
            batch.has_saliency,
        )
        parts = [score_batch(ctx, list(SCORE_FAMILIES))]
        if self.metrics:
            parts.append(
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
            parts.append(self._behaviour(model, images[:k], result, batch, k, lo))
        return parts

    def _behaviour(
        self, model: nn.Module, images: Tensor, result: CAMResult, batch: AuditSet, k: int, offset: int
    ) -> Scores:
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
        width = classifier_width(model)

        def logits(x: Tensor) -> Tensor:  # the engine's reading of the model's output (tuples, dicts, .logits)
            return logits_of(model(x), width, engine.output_key)

        scores, _ = behaviour_scores(logits, images, targets, maps, self.behaviour_options, saliency, has, offset)
        out: Scores = {
            key: (v, decided if mask is None else mask.bool() & decided) for key, (v, mask) in scores.items()
        }
        out[DECIDED] = (decided.float(), None)
        return out

    def _usable_sham(self, grid: tuple[int, int]) -> Optional[Tensor]:
        """The SHAM on the CAM grid, or ``None`` when it covers every pixel: after min-max it
        is all zeros, so no SHAM MSE is logged and the SHAM rule is off (warned once per grid)."""
        if grid not in self._shams:
            sham = sham_target(grid, self.sham_entropy, self.sham_pattern)
            note = whole_grid_note(sham, self.sham_entropy)
            self._shams[grid] = None if note is not None else sham
            if note is not None:
                rank_zero_warn(
                    f"CAMAudit: the {note}: sham_mse is not logged and the alarm's SHAM rule is off. Use larger "
                    "images, a finer CAM layer or a lower sham_entropy."
                )
        return self._shams[grid]

    def _nan_notes(self, values: dict[str, float]) -> list[str]:
        """What the non-finite scores of this audit left out, and which alarm rules they silenced."""
        assert self._scores is not None
        excluded = self._scores.excluded  # synced across ranks: every rank reads it
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

    def _alarm(self, values: dict[str, float]) -> tuple[dict[str, float], dict[Verdict, list[str]], Optional[Verdict]]:
        """``alarm/<rule>`` flags (1.0 for each rule that fired on any method), ``verdict/<v>``
        flags, the messages of the (rule, method) pairs that fired by verdict, and the
        verdict (``alarm.py``), from one evaluation of the rules."""
        firings = fire_rules(values, self.rules)
        fired = {f.rule for f in firings}
        found = verdict(firings)
        flags = {f"alarm/{r.name}": float(r.name in fired) for r in self.rules}
        flags.update({f"verdict/{v}": float(v == found) for v in VERDICTS})
        reasons = {v: [f.message() for f in firings if f.verdict == v] for v in VERDICTS}
        return flags, reasons, found

    def _report(
        self, trainer: Trainer, pl_module: LightningModule, values: dict[str, float], grid_rows: Optional[GridRows]
    ) -> None:
        """Log the figures and the alarm, warn on a verdict, and publish the review and the picture."""
        flags, by_verdict, found = self._alarm(values)
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
        message = self._warn_verdict(trainer, found, by_verdict)
        if alarm and trainer.state.fn == TrainerFn.FITTING and self.first_alarm_epoch is None:
            self.first_alarm_epoch = trainer.current_epoch
        if trainer.is_global_zero:
            self._review(trainer, values, message)
            if grid_rows is not None:
                self._publish(trainer, pl_module, grid_rows)

    def _warn_verdict(
        self, trainer: Trainer, found: Optional[Verdict], by_verdict: dict[Verdict, list[str]]
    ) -> Optional[str]:
        """Warn on a ``fooled`` or ``imprecise`` verdict; the fooling alarm's message, if any."""
        when = f"epoch {trainer.current_epoch} (step {trainer.global_step})"
        if found == "fooled":
            message = (
                f"CAMAudit fooling alarm at {when}: "
                + "; ".join(by_verdict["fooled"])
                + ". Verdict: fooled: the audited CAMs may be passively fooled "
                "(docs/audit-detection.md: 'What the audit can and cannot detect')."
            )
            rank_zero_warn(message)
            return message
        if found == "imprecise":
            rank_zero_warn(
                f"CAMAudit at {when}: "
                + "; ".join(by_verdict["imprecise"])
                + ". Verdict: imprecise, not fooled: the maps' top regions "
                "matter to the decision but the maps are coarse or off by a region (docs/audit-detection.md)."
            )
        return None

    def _publish(self, trainer: Trainer, pl_module: LightningModule, rows: GridRows) -> None:
        """The audit's picture, to every logger (PNG files without an image API)."""
        names = self.class_names or pl_module.hparams.get("class_names")
        labels = _row_labels(rows.explained, rows.predicted, list(names) if names else None)
        grid, titles = audit_grid(rows.images, rows.maps, rows.saliency, row_labels=labels)
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

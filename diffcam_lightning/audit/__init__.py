"""CAM auditing during training: the ``CAMAudit`` callback, its scores and its grids."""

from ..cams.classes import CAM_CLASSES
from .alarm import (
    ALARM_RULES,
    DEFAULT_DRIFT_THRESHOLD,
    DEFAULT_SHAM_THRESHOLD,
    VERDICTS,
    AlarmRule,
    Firing,
    build_rules,
    evaluate,
    fire_rules,
    register_rule,
    verdict,
)
from .auditset import AuditSet, BatchKeys, split_batch
from .behaviour import BehaviourOptions, behaviour_scores, deletion_drops, occlusion
from .callback import DEFAULT_METHODS, CAMAudit, default_drift_pairs
from .metrics import (
    SCORE_FAMILIES,
    SCORE_KEYS,
    AuditScores,
    ScoreContext,
    per_method,
    pointing_game,
    register_score,
    score_batch,
)
from .render import audit_grid, colorize, overlay
from .signals import SET_SIGNALS, AuditMaps, dependence, set_signals, spread

__all__ = [
    "ALARM_RULES",
    "CAM_CLASSES",
    "DEFAULT_DRIFT_THRESHOLD",
    "DEFAULT_METHODS",
    "DEFAULT_SHAM_THRESHOLD",
    "SCORE_FAMILIES",
    "SCORE_KEYS",
    "SET_SIGNALS",
    "VERDICTS",
    "AlarmRule",
    "AuditMaps",
    "AuditScores",
    "AuditSet",
    "BatchKeys",
    "BehaviourOptions",
    "CAMAudit",
    "Firing",
    "ScoreContext",
    "audit_grid",
    "behaviour_scores",
    "build_rules",
    "colorize",
    "default_drift_pairs",
    "deletion_drops",
    "dependence",
    "evaluate",
    "fire_rules",
    "occlusion",
    "overlay",
    "per_method",
    "pointing_game",
    "register_rule",
    "register_score",
    "score_batch",
    "set_signals",
    "split_batch",
    "spread",
    "verdict",
]

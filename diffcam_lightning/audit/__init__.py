"""CAM auditing during training: the ``CAMAudit`` callback, its scores and its grids."""

from .alarm import ALARM_RULES, VERDICTS, AlarmRule, Firing, build_rules, evaluate, register_rule, verdict
from .behaviour import BehaviourOptions, behaviour_scores, deletion_drops, occlusion
from .auditset import AuditSet, BatchKeys, split_batch
from .callback import CAM_CLASSES, DEFAULT_DRIFT_THRESHOLD, DEFAULT_METHODS, DEFAULT_SHAM_THRESHOLD, CAMAudit, default_drift_pairs
from .metrics import SCORE_FAMILIES, SCORE_KEYS, AuditScores, ScoreContext, per_method, pointing_game, register_score, score_batch
from .render import audit_grid, colorize, overlay
from .signals import SET_SIGNALS, AuditMaps, dependence, set_signals, spread

__all__ = [
    "ALARM_RULES",
    "VERDICTS",
    "BehaviourOptions",
    "behaviour_scores",
    "deletion_drops",
    "occlusion",
    "verdict",
    "AlarmRule",
    "AuditMaps",
    "Firing",
    "SET_SIGNALS",
    "build_rules",
    "dependence",
    "evaluate",
    "register_rule",
    "set_signals",
    "spread",
    "AuditScores",
    "AuditSet",
    "BatchKeys",
    "CAMAudit",
    "CAM_CLASSES",
    "DEFAULT_DRIFT_THRESHOLD",
    "DEFAULT_METHODS",
    "DEFAULT_SHAM_THRESHOLD",
    "SCORE_FAMILIES",
    "SCORE_KEYS",
    "ScoreContext",
    "audit_grid",
    "colorize",
    "default_drift_pairs",
    "overlay",
    "per_method",
    "pointing_game",
    "register_score",
    "score_batch",
    "split_batch",
]

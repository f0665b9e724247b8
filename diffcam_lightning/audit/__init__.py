"""CAM auditing during training: the ``CAMAudit`` callback, its scores and its grids."""

from .auditset import AuditSet, BatchKeys, split_batch
from .callback import CAM_CLASSES, DEFAULT_DRIFT_THRESHOLD, DEFAULT_METHODS, DEFAULT_SHAM_THRESHOLD, CAMAudit, default_drift_pairs
from .metrics import SCORE_FAMILIES, SCORE_KEYS, AuditScores, ScoreContext, per_method, pointing_game, register_score, score_batch
from .render import audit_grid, colorize, overlay

__all__ = [
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

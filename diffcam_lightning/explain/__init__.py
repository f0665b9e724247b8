"""``diffcam explain``: CAMs, predictions and raw maps for a user's own images."""

from .classes import imagenet_class_names
from .run import DEFAULT_METHODS, EXPLAIN_METHODS, ExplainOptions, run_explain

__all__ = ["DEFAULT_METHODS", "EXPLAIN_METHODS", "ExplainOptions", "imagenet_class_names", "run_explain"]

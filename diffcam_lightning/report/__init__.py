"""``diffcam report``: the paper's tables and figures from checkpoints."""

from .data import DataSpec
from .faithfulness import FaithfulnessSpec
from .run import ArchitectureSpec, ReportOptions, TimingSpec, run_report
from .sources import ModelSource, load_model, load_report_model

__all__ = [
    "ArchitectureSpec",
    "DataSpec",
    "FaithfulnessSpec",
    "ModelSource",
    "ReportOptions",
    "TimingSpec",
    "load_model",
    "load_report_model",
    "run_report",
]

"""ScoreCAM: its implementation lives in :mod:`.methods.scorecam` (the perturbation family);
this module keeps the old import path."""

from .methods.scorecam import (
    _EPS,
    _channel_masks,
    _fast_layout,
    _MaskedForwards,
    _Plan,
    _plan,
    channel_scores,
    scorecam,
)

__all__ = ["_EPS", "_MaskedForwards", "_Plan", "_channel_masks", "_fast_layout", "_plan", "channel_scores", "scorecam"]

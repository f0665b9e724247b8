"""ScoreCAM: its implementation lives in :mod:`.methods.scorecam` (the perturbation family);
this module keeps the old import path of its public names."""

from .methods.scorecam import channel_scores, channels_last_on_cpu, scorecam

__all__ = ["channel_scores", "channels_last_on_cpu", "scorecam"]

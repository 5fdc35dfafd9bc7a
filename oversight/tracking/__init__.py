"""Experiment tracking: one small interface, JSONL always on, W&B and TensorBoard as backends.

Notebook-side loaders live in `oversight.tracking.runs` (imported separately: they need pandas).
"""

from oversight.tracking.jsonl import JsonlTracker
from oversight.tracking.run_info import write_run_info
from oversight.tracking.tensorboard_tracker import TensorBoardTracker
from oversight.tracking.tracker import CompositeTracker, Tracker, TrackerConfig, open_tracker
from oversight.tracking.wandb_tracker import WandbTracker

__all__ = [
    "CompositeTracker",
    "JsonlTracker",
    "TensorBoardTracker",
    "Tracker",
    "TrackerConfig",
    "WandbTracker",
    "open_tracker",
    "write_run_info",
]

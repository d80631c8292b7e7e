"""The trainer: config, optimizer groups, schedule, loop, checkpoints, metrics log, distributed.

See docs/training.md. ``run_training(config, on_metrics=None, stop_event=None)`` is the entry
point for the CLI and for the app's spawned training process.
"""
from .config import ConfigError, TrainConfig, load_config
from .trainer import Trainer, TrainingAborted, TrainResult, run_training

__all__ = ["ConfigError", "TrainConfig", "load_config", "Trainer", "TrainResult", "TrainingAborted", "run_training"]

"""The trainer: config, optimizer groups, schedule, loop, checkpoints, metrics log, distributed,
weight averaging, and a run's best validated weights.

See docs/training.md. ``run_training(config, on_metrics=None, stop_event=None)`` is the entry
point for the CLI and for the app's spawned training process. ``import engine.train.config`` is
cheap (no torch): the public names below load their modules on first use.
"""
from __future__ import annotations

from engine import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    "ConfigError": "engine.train.config",
    "TrainConfig": "engine.train.config",
    "load_config": "engine.train.config",
    "Trainer": "engine.train.trainer",
    "TrainResult": "engine.train.trainer",
    "TrainingAborted": "engine.train.trainer",
    "run_training": "engine.train.trainer",
    "WeightAverage": "engine.train.averaging",
    "BestWeights": "engine.train.export",
    "best_validated_weights": "engine.train.export",
    "load_best_weights": "engine.train.export",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

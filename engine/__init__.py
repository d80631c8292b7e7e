"""PianoMuse engine: model, kernels, data, trainer, generation and real-time MIDI. Never imports textual.

``import engine`` is cheap: the public names below load their modules (and torch) on first use.
"""
from __future__ import annotations

import importlib

# public name -> module that defines it
_EXPORTS = {
    "PianoMuseRWKV": "engine.model.pianomuse",
    "StrategyError": "engine.model.pianomuse",
    "ModelConfig": "engine.model.config",
    "RWKV7": "engine.model.rwkv7",
    "RWKVState": "engine.model.state",
    "save_checkpoint": "engine.model.checkpoint",
    "load_checkpoint": "engine.model.checkpoint",
    "CheckpointError": "engine.model.checkpoint",
    "resize_vocab": "engine.model.vocab",
    "completion_mask": "engine.model.loss",
    "completion_loss": "engine.model.loss",
    "shifted_targets": "engine.model.loss",
    "wkv7": "engine.kernels.wkv7",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))

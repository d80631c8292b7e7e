"""PianoMuse engine: model, kernels, data, trainer, generation and real-time MIDI. Never imports textual.

``import engine`` is cheap: the public names below load their modules (and torch) on first use.
"""
from __future__ import annotations

import importlib
import sys

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


def lazy_exports(package: str, exports: dict[str, str]):
    """``(__getattr__, __dir__)`` for a package whose public names load their modules on first use."""
    namespace = sys.modules[package].__dict__

    def getattr_(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def dir_():
        return sorted(set(namespace) | set(exports))

    return getattr_, dir_


__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

"""The RWKV-7 ("x070") / "v8" ("x080") model: config, both modes, state, init, checkpoints, loss.

Imports with torch alone; ``import engine.model.config`` does not load torch (the training config
reads ``ModelConfig``'s fields from it): the public names below load their modules on first use.
"""
from __future__ import annotations

from engine import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    "ModelConfig": "engine.model.config",
    "ConfigError": "engine.model.config",
    "RWKV7": "engine.model.rwkv7",
    "RWKVState": "engine.model.state",
    "resize_vocab": "engine.model.vocab",
    "save_checkpoint": "engine.model.checkpoint",
    "load_checkpoint": "engine.model.checkpoint",
    "read_sidecar": "engine.model.checkpoint",
    "CheckpointError": "engine.model.checkpoint",
    "completion_mask": "engine.model.loss",
    "shifted_targets": "engine.model.loss",
    "completion_loss": "engine.model.loss",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

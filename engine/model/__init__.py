"""The RWKV-7 ("x070") / "v8" ("x080") model: config, both modes, state, init, checkpoints, loss.

Imports with torch alone.
"""
from .checkpoint import CheckpointError, load_checkpoint, read_sidecar, save_checkpoint
from .config import ConfigError, ModelConfig
from .loss import completion_loss, completion_mask, shifted_targets
from .rwkv7 import RWKV7
from .state import RWKVState
from .vocab import resize_vocab

__all__ = [
    "ModelConfig",
    "ConfigError",
    "RWKV7",
    "RWKVState",
    "resize_vocab",
    "save_checkpoint",
    "load_checkpoint",
    "read_sidecar",
    "CheckpointError",
    "completion_mask",
    "shifted_targets",
    "completion_loss",
]

"""The training request: what `train` is asked for, the same record from every face.

The CLI builds one from its flags, the Train pane from its fields, and the app hands it to the
training process it spawns; ``resolve()`` is the one way from a request to a validated
TrainConfig (``engine.train.launch.resolve_config``). Importing this module is cheap (no torch).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import TrainConfig


@dataclass
class TrainRequest:
    """None means "not asked for": the preset's, the config file's or the default value holds."""

    preset: str | None = None  # one of config.PRESETS; None with no config: the default for the device
    config: str | None = None  # a TOML file applied over the preset
    data: str | None = None  # a MIDI folder or a prepared token store; None: the bundled corpus
    run_root: str | None = None  # the folder that holds run directories; None: runs/
    max_steps: int | None = None
    device: str | None = None  # auto | cpu | cuda
    resume: str | None = None  # "auto" (the newest run) or a run/checkpoint path
    init_from: str | None = None  # a checkpoint to fine-tune from
    overrides: list[str] = field(default_factory=list)  # "section.key=value"

    def resolve(self) -> "TrainConfig":
        """Defaults <- preset <- config file <- overrides <- the named fields; validated."""
        from .launch import resolve_config

        return resolve_config(self.config, self.preset, list(self.overrides), data=self.data, run_root=self.run_root,
                              max_steps=self.max_steps, device=self.device, resume=self.resume, init_from=self.init_from)

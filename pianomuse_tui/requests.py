"""What a command asks its pane for: the typed arguments a headless command hands to the app.

`pianomuse-tui check DIR` on a terminal opens the Dataset pane with a ``DatasetArgs``, `train` the
Train pane with a ``TrainArgs`` (around the engine's ``TrainRequest``), `generate` the Generate
pane with a ``GenerateArgs``; each pane reads these fields and nothing else. This module imports
neither textual nor torch, so the headless commands build the records without loading the app.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.generate.defaults import DuetConfig
from engine.train.request import TrainRequest


@dataclass(frozen=True)
class DatasetArgs:
    """The Dataset pane's start: `check`'s arguments."""

    folder: str | None = None  # the MIDI folder; None: the bundled demo corpus
    store: str | None = None  # where `p` prepares the store; None: ``store_for(folder)``
    workers: int | None = None  # scan worker processes; None: the engine's default
    policy: str | None = None  # piano extraction policy; None: the data config's
    report_json: str | None = None  # also write the scan's JSON report here
    scan: bool = True  # scan as soon as the pane opens


@dataclass(frozen=True)
class GenerateArgs:
    """The Generate pane's start: `generate`'s arguments. None means the pane's own default (the
    engine's generation defaults for the knobs, the bundled model for the checkpoint)."""

    checkpoint: str | None = None
    prompt: str | None = None  # a .mid to continue
    prompt_bars: str | None = None  # which bars of the prompt, e.g. "13-16"
    bars: int | None = None
    alternatives: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    midi_api: str | None = None  # "auto", "jack", "alsa", ...
    port: str | None = None  # an existing MIDI port to play to
    synth: str | None = None  # "fluidsynth" or "builtin": start that synth instead of a port
    midi_in: str | None = None  # a MIDI input port to play with (a keyboard)
    duet: DuetConfig | None = None  # how the model plays with you (mode and its knobs); None: the engine's defaults


@dataclass(frozen=True)
class TrainArgs:
    """The Train pane's start: `train`'s request, or a run folder to watch."""

    request: TrainRequest = field(default_factory=TrainRequest)
    attach: str | None = None  # watch this run directory (written by another process)
    start: bool = False  # start (or, with request.resume, resume) at once


# what `open_app` hands the pane it opens on
PaneArgs = DatasetArgs | GenerateArgs | TrainArgs

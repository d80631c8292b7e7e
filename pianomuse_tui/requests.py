"""What a command asks its pane for: the typed arguments a headless command hands to the app.

`pianomuse-tui check DIR` on a terminal opens the Dataset pane with a ``DatasetArgs``; the pane
reads these fields and nothing else. This module imports neither textual nor the engine's heavy
parts, so the headless commands can build the records without loading the app.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetArgs:
    """The Dataset pane's start: `check`'s arguments."""

    folder: str | None = None  # the MIDI folder; None: the bundled demo corpus
    store: str | None = None  # where `p` prepares the store; None: ``store_for(folder)``
    workers: int | None = None  # scan worker processes; None: the engine's default
    policy: str | None = None  # piano extraction policy; None: the data config's
    report_json: str | None = None  # also write the scan's JSON report here
    scan: bool = True  # scan as soon as the pane opens

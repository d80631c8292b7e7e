"""Typed messages the panes exchange with their workers.

Workers never touch widgets: they post one of these and the pane updates itself on the UI thread.
Messages that describe "the latest state of something" say so with ``can_replace``: when a flood of
them queues up behind a slow frame, Textual drops all but the newest (the idea is toolong's), so a
trainer writing hundreds of metric lines a second cannot make the UI fall behind. Messages that
carry data (a finished scan, a run that ended) never coalesce.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from engine.data.check import ScanReport
    from engine.train.request import TrainRequest

    from engine.generate.performance import PerformanceTelemetry
    from .training_process import TrainingProcess


class Coalescing(Message):
    """A state update: a newer message of the same type supersedes a queued older one."""

    def can_replace(self, message: Message) -> bool:
        return type(message) is type(self)


# ---- dataset ------------------------------------------------------------------------------------


@dataclass
class ScanProgress(Coalescing):
    done: int
    total: int
    current: str = ""
    files_per_s: float = 0.0


@dataclass
class ScanFinished(Message):
    """The scan ended: ``report`` is the engine's ScanReport (None when cancelled or failed)."""

    folder: Path
    report: ScanReport | None = None
    cancelled: bool = False
    error: str | None = None
    names: dict[str, str] = field(default_factory=dict)  # path -> name relative to the folder


@dataclass
class PrepareProgress(Coalescing):
    done: int
    total: int
    stage: str = ""


@dataclass
class PrepareFinished(Message):
    store: Path | None
    detail: str = ""
    cancelled: bool = False
    error: str | None = None


# ---- training -----------------------------------------------------------------------------------


@dataclass
class MetricsArrived(Coalescing):
    """New lines were appended to a run's metrics.jsonl; the pane drains its tail buffer.

    The records themselves stay in the tail's buffer, so dropping a superseded notice loses no
    data point: only redundant wake-ups are dropped.
    """

    run_dir: Path
    pending: int = 0


@dataclass
class RunLaunched(Message):
    """The launcher's answer to "start a run": the spawned process, or the sentence saying why not."""

    spec: TrainRequest
    process: TrainingProcess | None = None
    error: str | None = None


@dataclass
class RunLocated(Message):
    """The attach worker's answer: the run directory to watch, or the sentence saying why there is none."""

    run_dir: Path | None
    error: str | None = None


@dataclass
class RunStarted(Message):
    run_dir: Path
    attached: bool = False


@dataclass
class RunEnded(Message):
    """The training process ended (or the attached run went quiet and says so)."""

    run_dir: Path | None
    exit_code: int | None = None
    error: str | None = None


@dataclass
class ResourceSample(Coalescing):
    """Machine readout: NVML when an NVIDIA GPU is there, process RAM otherwise."""

    gpu_util: float | None = None
    gpu_mem_used: float | None = None
    gpu_mem_total: float | None = None
    ram_rss: float | None = None
    ram_total: float | None = None  # the machine's RAM, the scale of the RAM bar
    source: str = ""


@dataclass
class DeviceDetected(Message):
    label: str


# ---- generation ---------------------------------------------------------------------------------


@dataclass
class PerformanceStarted(Message):
    output: str


@dataclass
class PerformanceProgress(Coalescing):
    """Latest telemetry of the running performance; notes go through the piano roll's buffer."""

    telemetry: PerformanceTelemetry | None = None


@dataclass
class PerformanceEnded(Message):
    reason: str = "stopped"
    error: str | None = None
    saved: Path | None = None
    output_failed: bool = False  # the output could not open (no MIDI system, no sound device, ...)


@dataclass
class TakeWritten(Message):
    """A take generated straight to files (no output needed), or the sentence saying why not."""

    paths: list[Path]
    error: str | None = None


@dataclass
class PortsListed(Message):
    api: str
    ports: list[str]
    error: str | None = None
    inputs: list[str] = field(default_factory=list)  # "name\tapi" of every MIDI source (keyboards)

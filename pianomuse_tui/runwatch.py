"""Watching a training run from the outside: its metrics.jsonl, its checkpoints, its auditions.

A run directory is the whole contract between the trainer and the app (docs/ARCHITECTURE.md), so
the same code follows a run the app started and one that ``--headless train`` is writing in
another terminal. Nothing here trains: it reads files, and asks a run to stop by creating
``control/stop``.
"""
from __future__ import annotations

import json
import os
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

ARTIFACT_KINDS = ("checkpoint", "audition")

# The trainer's field names, with the spellings the issue texts also use, so a run written by
# either reads the same here.
_ALIASES = {
    "split": "kind",
    "mem_allocated": "mem_alloc",
    "mem_alloc_bytes": "mem_alloc",
    "mem_reserved_bytes": "mem_reserved",
    "mem_peak_bytes": "mem_peak",
    "tok_per_s": "tokens_per_s",
}


def normalise_record(record: dict) -> dict:
    out = {_ALIASES.get(k, k): v for k, v in record.items()}
    if "kind" not in out:
        out["kind"] = "val" if "val_loss" in out else "train"
    if out["kind"] == "val" and "val_loss" not in out and "loss" in out:
        out["val_loss"] = out["loss"]
    return out


class MetricsTail:
    """Reads the lines appended to ``metrics.jsonl`` since the last read.

    A line is only taken once its newline is there, so a record the trainer is half-way through
    writing is read whole on the next poll. Records wait in ``pending`` until the UI drains them;
    that is what lets the "new metrics" message coalesce without losing points.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self._offset = 0
        self._partial = b""
        self._lock = threading.Lock()
        self.pending: list[dict] = []
        self.bad_lines = 0
        self.last_growth: float | None = None
        # running counts, so the watcher knows when to read the run's files again without
        # looking into the records the UI drains
        self.records_read = 0
        self.artifact_records = 0  # "checkpoint" and "audition" records: new files in the run

    def poll(self) -> int:
        """Read what was appended; return how many new records are waiting."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return len(self.pending)
        if size < self._offset:  # the file was replaced: read it again from the start
            self._offset, self._partial = 0, b""
        if size == self._offset:
            return len(self.pending)
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read(size - self._offset)
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        records = []
        for line in lines:
            if not line.strip():
                continue
            try:
                records.append(normalise_record(json.loads(line)))
            except (ValueError, AttributeError):
                self.bad_lines += 1
        self.records_read += len(records)
        self.artifact_records += sum(r.get("kind") in ARTIFACT_KINDS for r in records)
        with self._lock:
            self.pending.extend(records)
            return len(self.pending)

    def drain(self) -> list[dict]:
        with self._lock:
            records, self.pending = self.pending, []
        return records


@dataclass
class Checkpoint:
    name: str
    path: Path  # the model .pth
    step: int | None


def _step_of(name: str) -> int | None:
    digits = "".join(ch for ch in name if ch.isdigit())
    return int(digits) if digits else None


def list_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Checkpoints of a run, newest first (``checkpoints/step-XXXXXXXX/model.pth``)."""
    root = Path(run_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for sub in root.iterdir():
            if sub.is_dir() and not sub.name.startswith("."):
                pths = sorted(sub.glob("*.pth"))
                if pths:
                    model = sub / "model.pth"
                    found.append(Checkpoint(sub.name, model if model.exists() else pths[0], _step_of(sub.name)))
    return sorted(found, key=lambda c: (c.step or -1, c.name), reverse=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    for marker in ("latest", "last"):
        named = root / marker
        if named.is_file():
            target = root / named.read_text().strip()
            pth = target / "model.pth" if target.is_dir() else target
            if pth.exists():
                return pth
    ckpts = list_checkpoints(run_dir)
    return ckpts[0].path if ckpts else None


def list_auditions(run_dir: Path) -> list[Path]:
    """Audition MIDI files, newest first (``auditions/`` or ``samples/``)."""
    files: list[Path] = []
    for folder in ("auditions", "samples"):
        files.extend((Path(run_dir) / folder).glob("*.mid"))
    return sorted(files, key=lambda p: (_step_of(p.stem) or -1, p.name), reverse=True)


def read_config(run_dir: Path) -> dict:
    """The run's resolved ``config.toml``, or {} while it is missing or half-written."""
    try:
        return tomllib.loads((Path(run_dir) / "config.toml").read_text())
    except (OSError, ValueError):
        return {}


@dataclass
class RunFiles:
    """What the Train pane shows of a run's folder besides its metrics, read in one go off the UI thread."""

    run_dir: Path
    config: dict
    checkpoints: list[Checkpoint]
    auditions: list[Path]

    @property
    def max_steps(self) -> int | None:
        value = (self.config.get("train") or {}).get("max_steps")
        return int(value) if isinstance(value, int) else None

    @property
    def model_line(self) -> str:
        model = self.config.get("model") or {}
        if not model:
            return ""
        preset = self.config.get("preset") or "custom"
        return f"preset {preset} (L{model.get('n_layer')} D{model.get('n_embd')} {model.get('arch')})"


def read_run_files(run_dir: Path) -> RunFiles:
    return RunFiles(Path(run_dir), read_config(run_dir), list_checkpoints(run_dir), list_auditions(run_dir))


def request_stop(run_dir: Path) -> Path:
    """Ask the trainer to save and exit at the next step boundary."""
    control = Path(run_dir) / "control"
    control.mkdir(parents=True, exist_ok=True)
    stop = control / "stop"
    stop.touch()
    return stop


def is_run_dir(path: Path) -> bool:
    path = Path(path)
    return (path / "metrics.jsonl").exists() or (path / "config.toml").exists()


def newest_run(root: Path) -> Path | None:
    """The most recently modified run directory under ``root`` (or ``root`` itself if it is one)."""
    root = Path(root)
    if is_run_dir(root):
        return root
    if not root.is_dir():
        return None
    runs = [p for p in root.iterdir() if p.is_dir() and is_run_dir(p)]
    return max(runs, key=lambda p: os.path.getmtime(p), default=None)


class EtaClock:
    """Time left in a run, from its records: the rate since this session of the run began.

    A resumed run logs steps from where it left off while its ``elapsed_s`` starts again at 0, so
    the rate is measured from the last ``started``/``resumed`` status record, never from step 0.
    Both faces feed it the records they read (the headless display, the Train pane).
    """

    def __init__(self) -> None:
        self.origin: tuple[int, float] | None = None  # (step, elapsed_s) where this session began
        self.latest: tuple[int, float] | None = None

    def feed(self, record: dict) -> None:
        step, elapsed = record.get("step"), record.get("elapsed_s")
        if not isinstance(step, int) or not isinstance(elapsed, (int, float)):
            return
        if record.get("kind") == "status" and record.get("state") in ("started", "resumed"):
            self.origin = (step, float(elapsed))
            self.latest = None
        elif record.get("kind") == "train":
            if self.origin is None:  # a log read from its middle: measure from the first step seen
                self.origin = (step, float(elapsed))
            self.latest = (step, float(elapsed))

    def eta_s(self, max_steps: int | None) -> float | None:
        """Seconds until ``max_steps`` at this session's pace; None until two points are known."""
        if not max_steps or self.origin is None or self.latest is None:
            return None
        (s0, e0), (s1, e1) = self.origin, self.latest
        if s1 <= s0 or e1 <= e0:
            return None
        return (e1 - e0) / (s1 - s0) * max(0, max_steps - s1)

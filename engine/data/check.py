"""Dataset checks: scan a folder of MIDI files in worker processes and report on every file.

``scan(folder)`` returns a ``ScanReport``: one ``FileRecord`` per file (path, status ``ok`` |
``warning`` | ``error``, reasons, ``FileStats``) and a ``ScanSummary``. These dataclasses are the
records the CLI, the Dataset pane and the store read; the JSON report is their ``to_dict``. A
reason reads ``"<category>: <details>"``; the summary ranks the categories by how many files they hit.

Files are inspected in worker processes, one file at a time per worker, each under a per-file
timeout: a file that makes the parser hang (or crash) is reported as an error and its worker is
killed and replaced, so no file can stall or abort the scan. ``prepare`` reuses the same workers
to tokenize, so a file is read once for both.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import time
import traceback
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait as wait_connections
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from engine.atomic import write_atomic

from .piano_policy import DEFAULT_PIANO_POLICY, PIANO_PROGRAMS, check_piano_policy

MIDI_SUFFIXES = (".mid", ".midi", ".kar")
STATUSES = ("ok", "warning", "error")


@dataclass
class CheckPolicy:
    """What the checks call a problem. ``piano_policy``: see ``engine.data.piano_policy.PIANO_POLICIES``."""

    piano_policy: str = DEFAULT_PIANO_POLICY
    timeout_s: float = 30.0
    min_tempo_bpm: float = 20.0
    max_tempo_bpm: float = 400.0
    min_ticks_per_quarter: int = 24
    max_silence_s: float = 30.0
    max_onsets_per_s: int = 60  # onsets inside any one-second window
    tokenize: bool = True  # count tokens in the report (prepare always tokenizes)
    # limits: a file over one is an error, found before anything is expanded (parsed into
    # bars, tokenized), so no single file can take a command past its memory or its time
    limit_file_mb: float = 8.0
    limit_duration_s: float = 7200.0
    limit_silence_s: float = 600.0
    limit_tokens: int = 200_000

    def __post_init__(self) -> None:
        # a bad setting must stop the scan with one sentence, not fail every file in the workers
        if not isinstance(self.piano_policy, str):
            raise ValueError(f"check.piano_policy must be a name in quotes, not {self.piano_policy!r}")
        check_piano_policy(self.piano_policy)
        if not isinstance(self.tokenize, bool):
            raise ValueError(f"check.tokenize must be true or false, not {self.tokenize!r}")
        for name, kind in _NUMBERS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
                what = "a whole number" if kind is int else "a number"
                raise ValueError(f"check.{name} must be {what} greater than 0 (e.g. {_DEFAULTS[name]}), not {value!r}")
            if not value > 0:
                raise ValueError(f"check.{name} must be greater than 0 (e.g. {_DEFAULTS[name]}), not {value!r}")
        if self.min_tempo_bpm >= self.max_tempo_bpm:
            raise ValueError(f"check.min_tempo_bpm ({self.min_tempo_bpm:g}) must be below check.max_tempo_bpm ({self.max_tempo_bpm:g})")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "CheckPolicy":
        data = dict(data or {})
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown check setting(s) {', '.join(sorted(unknown))}; known: {', '.join(cls.__dataclass_fields__)}")
        return cls(**data)


_NUMBERS = {"timeout_s": float, "min_tempo_bpm": float, "max_tempo_bpm": float, "min_ticks_per_quarter": int,
            "max_silence_s": float, "max_onsets_per_s": int, "limit_file_mb": float, "limit_duration_s": float,
            "limit_silence_s": float, "limit_tokens": int}
_DEFAULTS = {name: CheckPolicy.__dataclass_fields__[name].default for name in _NUMBERS}


class ScanError(RuntimeError):
    """The scan itself could not run (bad folder); the message is one sentence for the user."""


@dataclass
class FileStats:
    """What the check measured of one file. A field stays None when the check stopped before it
    (an unreadable file has no duration); ``to_dict`` leaves those out of the JSON report."""

    bytes: int | None = None
    file_hash: str | None = None  # sha256 of the bytes: what an incremental prepare keys on
    format: int | None = None  # MIDI file format 0, 1 or 2
    tracks: int | None = None  # track chunks in the file
    ticks_per_quarter: int | None = None
    duration_s: float | None = None
    notes: int | None = None  # notes the piano extraction keeps
    notes_per_s: float | None = None
    pitch_range: list[int] | None = None  # [lowest, highest] MIDI pitch
    pitch_histogram: list[int] | None = None  # notes per MIDI pitch 0..127
    velocity_histogram: list[int] | None = None  # notes per velocity bin of 16
    sustain_pedal: dict[str, float] | None = None  # {"presses", "down_fraction"}
    max_polyphony: int | None = None
    max_onsets_per_s: int | None = None  # onsets inside any one-second window
    longest_silence_s: float | None = None
    tempo_changes: int | None = None
    tempo_bpm: list[float] | None = None  # [slowest, fastest]
    time_signature_changes: int | None = None
    kept_tracks: int | None = None
    note_hash: str | None = None  # content hash of the notes: duplicates and the train/val split key on it
    dropped_notes: int | None = None  # notes left out when none was usable
    tokens: int | None = None
    bars: int | None = None
    cpu_s: float | None = None  # this file's check cost, whatever the machine's load
    traceback: str | None = None  # when a check itself failed (a bug, reported on the file)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FileStats":
        return cls(**data)


@dataclass
class FileRecord:
    """The check's verdict on one file: ``status`` ok | warning | error, and why.

    A reason reads ``"<category>: <details>"``; errors leave the file out of a store, warnings
    keep it."""

    path: str
    status: str = "ok"
    reasons: list[str] = field(default_factory=list)
    stats: FileStats = field(default_factory=FileStats)
    notes: list[str] = field(default_factory=list)  # information: what was left out or merged, not a problem

    @property
    def usable(self) -> bool:
        return self.status != "error"

    @property
    def is_duplicate(self) -> bool:
        return any(r.startswith("duplicate") for r in self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "status": self.status, "reasons": list(self.reasons), "notes": list(self.notes),
                "stats": self.stats.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FileRecord":
        return cls(data["path"], data["status"], list(data["reasons"]), FileStats.from_dict(data.get("stats") or {}),
                   list(data.get("notes") or []))


# ``on_progress(done, total, record)``: called after each file of a scan or prepare
FileProgress = Callable[[int, int, FileRecord], None]


@dataclass
class ReasonCount:
    reason: str  # a reason's category (the part before the colon)
    files: int


@dataclass
class ScanSummary:
    """Totals of a scan; hours, notes and tokens count the usable (non-error) files."""

    files: int
    status: dict[str, int]  # files per status, every status present
    hours: float
    notes: int
    tokens: int
    reasons: list[ReasonCount]  # most frequent first
    root: str = ""
    piano_policy: str = DEFAULT_PIANO_POLICY
    workers: int | None = None  # a scan's; prepare leaves it out
    elapsed_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ScanSummary":
        data = dict(data)
        data["reasons"] = [ReasonCount(**r) for r in data.get("reasons", [])]
        return cls(**data)


@dataclass
class ScanReport:
    files: list[FileRecord]
    summary: ScanSummary

    def to_dict(self) -> dict[str, Any]:
        return {"files": [r.to_dict() for r in self.files], "summary": self.summary.to_dict()}

    def to_json(self) -> str:
        """The report as JSON text with one line per file: indenting every list item would put each
        of a file's 128 pitch-histogram counts on a line of its own and double the report's size."""
        files = ",\n".join(" " + json.dumps(record.to_dict()) for record in self.files)
        files = f"[\n{files}\n]" if files else "[]"
        return f'{{"files": {files},\n"summary": {json.dumps(self.summary.to_dict(), indent=1)}}}\n'

    def write(self, path: str | Path) -> None:
        write_atomic(path, self.to_json())

    @classmethod
    def read(cls, path: str | Path) -> "ScanReport":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls([FileRecord.from_dict(r) for r in data["files"]], ScanSummary.from_dict(data["summary"]))


def find_midi_files(folder: str | Path) -> list[Path]:
    """Every .mid/.midi/.kar under ``folder`` (recursive, case-insensitive suffix), sorted."""
    folder = Path(folder)
    if not folder.exists():
        raise ScanError(f"the folder {folder} does not exist; give a folder of MIDI files (or none for the demo corpus)")
    if not folder.is_dir():
        raise ScanError(f"{folder} is a file, not a folder; give the folder that holds your MIDI files")
    # links that lead nowhere, pipes and devices are listed too: each gets a line in the report
    found = [p for p in folder.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and not p.is_dir()]
    return sorted(found)


def not_a_regular_file(path: Path) -> str | None:
    """The report's reason when ``path`` is a dangling link, a pipe, a socket or a device (never opened)."""
    import stat

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            return _reason("dangling link", f"it points at {os.readlink(path)}, which does not exist")
        return _reason("unreadable", "the file disappeared during the scan")
    except OSError as exc:
        return _reason("unreadable", f"cannot read the file ({exc.strerror or exc})")
    for test, what in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return _reason("not a regular file", f"it is {what}, not a MIDI file on disk")
    return None


# ---- one file, inside a worker ------------------------------------------------------------------
def _reason(category: str, details: str = "") -> str:
    return f"{category}: {details}" if details else category


class OverLimit(ValueError):
    """A file over one of ``CheckPolicy``'s limits; ``reason`` is the report's reason text."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_SETTING = "raise it in data.toml [check] if the file is genuine"


def read_within_limits(path: Path, policy: CheckPolicy) -> bytes:
    """The file's bytes, once its size is known to be within ``limit_file_mb``."""
    size = path.stat().st_size
    if size > policy.limit_file_mb * 2**20:
        raise OverLimit(_reason("over the size limit", f"{size / 2**20:.1f} MB, the limit is limit_file_mb = "
                                f"{policy.limit_file_mb:g} MB; {_SETTING}"))
    return path.read_bytes()


def check_timing_header(raw, data: bytes, policy: CheckPolicy) -> tuple[bytes, list[str]]:
    """The bytes a parser can read (SMPTE recast as ticks per quarter) and the warnings that go with
    them; OverLimit for a file whose length in beats exceeds ``limit_duration_s`` even at
    ``max_tempo_bpm`` (its gaps would expand into that many empty bars)."""
    warnings = []
    if raw.smpte:
        # symusic reads only ticks per quarter: give it the same ticks per second at 120 bpm,
        # so times in seconds stay right and bars follow a nominal 120 bpm
        fps, ticks_per_frame = 256 - data[12], data[13]
        tpq = max(1, round(fps * ticks_per_frame / 2))
        data = data[:12] + tpq.to_bytes(2, "big") + data[14:]
        warnings.append(_reason("SMPTE timing", f"{fps} frames/s x {ticks_per_frame} ticks read as {tpq} ticks per quarter at 120 bpm; bars are nominal"))
    else:
        tpq = raw.division
        if tpq == 0:
            raise OverLimit(_reason("no time division", "the header gives 0 ticks per quarter note, so no event has a time; "
                                    "re-export the file from its editor"))
    beats = raw.length_ticks / tpq
    most = policy.limit_duration_s * policy.max_tempo_bpm / 60.0
    if beats > most:
        raise OverLimit(_reason("over the duration limit", f"{beats:,.0f} beats, longer than limit_duration_s = "
                                f"{policy.limit_duration_s:g} s even at {policy.max_tempo_bpm:g} bpm; {_SETTING}"))
    return data, warnings


def parser_problem(exc: Exception) -> str:
    """The MIDI parser's complaint in words a user can act on (its own texts are terse, misspelt C++ messages)."""
    text = str(exc)
    if "velocity=" in text:
        return f"a note has velocity {text.rsplit('=', 1)[-1].strip()}, above MIDI's 127; the file is damaged or not standard MIDI"
    if "nvaild" in text or "nvalid" in text:  # symusic's own spelling included
        return "the MIDI parser rejected its structure; the file is damaged or not standard MIDI"
    return "the MIDI parser could not read it; the file is damaged or not standard MIDI"


def note_span(start: np.ndarray, end: np.ndarray) -> tuple[float, float]:
    """(duration, longest silence) in seconds of notes starting at ``start`` and ending at ``end``."""
    order = np.argsort(start, kind="stable")
    covered_until = np.maximum.accumulate(end[order])
    gaps = start[order][1:] - covered_until[:-1]
    return float(end.max()), float(max(gaps.max() if len(gaps) else 0.0, start.min()))


def check_span(duration_s: float, longest_silence_s: float, notes: int, policy: CheckPolicy) -> None:
    """OverLimit for a piece too long, too silent or with too many notes to tokenize within ``limit_tokens``."""
    if duration_s > policy.limit_duration_s:
        raise OverLimit(_reason("over the duration limit", f"{duration_s / 3600:.2f} h, the limit is limit_duration_s = "
                                f"{policy.limit_duration_s:g} s; {_SETTING}"))
    if longest_silence_s > policy.limit_silence_s:
        raise OverLimit(_reason("over the silence limit", f"{longest_silence_s:.0f} s without a sounding note, the limit is "
                                f"limit_silence_s = {policy.limit_silence_s:g} s; {_SETTING}"))
    if 3 * notes > policy.limit_tokens:  # every note takes at least 3 tokens (pitch, velocity, duration)
        raise OverLimit(_reason("over the token limit", f"{notes:,} notes need more than limit_tokens = "
                                f"{policy.limit_tokens:,} tokens; {_SETTING}"))


def note_hash(pitches: np.ndarray, starts_q: np.ndarray, durations_q: np.ndarray, velocities: np.ndarray) -> str:
    """Content hash of note data on a 1/480-quarter grid (time division and track layout do not matter)."""
    grid = np.stack([np.rint(starts_q * 480), np.rint(durations_q * 480), pitches, velocities], axis=1).astype(np.int64)
    grid = grid[np.lexsort(grid.T[::-1])]
    return hashlib.blake2b(grid.tobytes(), digest_size=16).hexdigest()


def _max_polyphony(starts: np.ndarray, ends: np.ndarray) -> int:
    if len(starts) == 0:
        return 0
    times = np.concatenate([starts, ends])
    steps = np.concatenate([np.ones(len(starts), np.int64), -np.ones(len(ends), np.int64)])
    order = np.lexsort((steps, times))  # at equal times, releases come before attacks
    return int(np.cumsum(steps[order]).max())


def inspect_file(path: str | Path, policy: CheckPolicy, tokenizer=None) -> tuple[FileRecord, Any, Any]:
    """(record, ids or None, bar_starts or None) for one file. Never raises for a bad file."""
    import symusic

    from .midi_bytes import MidiStructureError, walk_midi_bytes
    from .tokenizer import PIANO_HIGH, PIANO_LOW, merge_tracks, piano_tracks

    path = Path(path)
    errors, warnings, notes_told = [], [], []
    stats: dict[str, Any] = {}  # FileStats' fields, filled as the checks get that far
    cpu_began = time.process_time()

    def finish(ids=None, bars=None):
        stats["cpu_s"] = round(time.process_time() - cpu_began, 5)
        status = "error" if errors else ("warning" if warnings else "ok")
        return FileRecord(str(path), status, errors + warnings, FileStats(**stats), notes_told), ids, bars

    special = not_a_regular_file(path)
    if special:
        errors.append(special)
        return finish()
    try:
        data = read_within_limits(path, policy)
    except OSError as exc:
        errors.append(_reason("unreadable", f"cannot read the file ({exc.strerror or exc})"))
        return finish()
    except OverLimit as exc:
        errors.append(exc.reason)
        return finish()
    stats["bytes"] = len(data)
    stats["file_hash"] = hashlib.sha256(data).hexdigest()
    try:
        raw = walk_midi_bytes(data)
    except MidiStructureError as exc:
        errors.append(exc.reason)
        return finish()
    stats.update(format=raw.format, tracks=raw.track_chunks, ticks_per_quarter=raw.division)
    try:
        data, timing_warnings = check_timing_header(raw, data, policy)
    except OverLimit as exc:
        errors.append(exc.reason)
        return finish()
    warnings.extend(timing_warnings)
    if raw.smpte:
        stats["ticks_per_quarter"] = int.from_bytes(data[12:14], "big")
    if raw.format == 2:
        warnings.append(_reason("format 2", "independent sequences were read as parallel tracks"))
    if not raw.smpte and raw.division < policy.min_ticks_per_quarter:
        warnings.append(_reason("absurd time division", f"{raw.division} ticks per quarter"))
    if raw.unreleased_note_ons:
        warnings.append(_reason("note-ons never released", f"{raw.unreleased_note_ons} dropped"))
    try:
        score = symusic.Score.from_midi(data)
    except Exception as exc:  # noqa: BLE001 - symusic raises RuntimeError with its parser's message
        errors.append(_reason("unreadable", parser_problem(exc)))
        return finish()

    total_notes = sum(len(t.notes) for t in score.tracks)
    if total_notes == 0:
        errors.append(_reason("no notes", "the file holds no notes"))
        return finish()
    kept, dropped = piano_tracks(score, policy.piano_policy)
    drums = [t for t in dropped if t.is_drum and len(t.notes)]
    others = [t for t in dropped if not t.is_drum and len(t.notes)]
    if drums:  # a piano model has no use for percussion: leaving it out is information, not a problem
        notes_told.append(_reason("drums left out", f"{len(drums)} drum track(s), {sum(len(t.notes) for t in drums)} notes"))
    if others:
        programs = sorted({t.program for t in others})
        warnings.append(_reason("non-piano programs dropped", f"{len(others)} track(s), GM program(s) {', '.join(map(str, programs))}; "
                                "--policy all merges them too"))
    pitched_kept = [t for t in kept if len(t.notes)]
    if policy.piano_policy == "auto" and pitched_kept and not any(t.program in PIANO_PROGRAMS for t in pitched_kept):
        programs = sorted({t.program for t in pitched_kept})
        warnings.append(_reason("no piano track", f"merged the {len(pitched_kept)} pitched track(s) (GM program(s) "
                                f"{', '.join(map(str, programs))}) as piano"))
    piano = merge_tracks(score, kept)
    seconds = piano.to("second")
    notes = seconds.tracks[0].notes.numpy()
    ticks = piano.tracks[0].notes.numpy()
    pitch = notes["pitch"].astype(np.int64)
    in_range = (pitch >= PIANO_LOW) & (pitch <= PIANO_HIGH)
    outside = int((~in_range).sum())
    if outside:
        warnings.append(_reason("notes outside the piano range", f"{outside} notes outside {PIANO_LOW}-{PIANO_HIGH}"))
    if not in_range.any():
        remedy = ("it holds only drums, which a piano model cannot learn from" if not any(not t.is_drum and len(t.notes) for t in score.tracks)
                  else "--policy all merges every pitched track" if policy.piano_policy != "all"
                  else "its notes lie outside the piano's 88 keys")
        errors.append(_reason("no usable piano notes", f"none left after the '{policy.piano_policy}' piano policy and the piano range; {remedy}"))
        stats.update(notes=0, dropped_notes=total_notes)
        return finish()

    start = notes["time"].astype(np.float64)
    end = start + notes["duration"].astype(np.float64)
    last_end, longest_silence = note_span(start, end)
    duration_s = float(max(seconds.end(), last_end))
    try:
        check_span(duration_s, longest_silence, len(pitch), policy)
    except OverLimit as exc:
        errors.append(exc.reason)
        stats.update(duration_s=round(duration_s, 3), notes=int(len(pitch)))
        return finish()
    velocity = notes["velocity"].astype(np.int64)
    qpms = [t.qpm for t in score.tempos] or [120.0]
    pedals = seconds.tracks[0].pedals.numpy() if len(seconds.tracks[0].pedals) else {"time": np.zeros(0), "duration": np.zeros(0)}
    onsets = np.sort(start)
    # most onsets inside any window [t, t + 1 s)
    densest = int((np.searchsorted(onsets, onsets + 1.0, side="left") - np.arange(len(onsets))).max())
    tpq = max(piano.ticks_per_quarter, 1)
    stats.update(
        duration_s=round(duration_s, 3),
        notes=int(len(pitch)),
        notes_per_s=round(len(pitch) / duration_s, 3) if duration_s > 0 else 0.0,
        pitch_range=[int(pitch.min()), int(pitch.max())],
        # notes per MIDI pitch, of the notes counted above (outside the piano range included)
        pitch_histogram=np.bincount(pitch, minlength=128).astype(int).tolist(),
        velocity_histogram=np.histogram(velocity, bins=8, range=(0, 128))[0].astype(int).tolist(),
        sustain_pedal={"presses": int(len(pedals["time"])),
                       "down_fraction": round(min(1.0, float(np.sum(pedals["duration"])) / duration_s), 3) if duration_s > 0 else 0.0},
        max_polyphony=_max_polyphony(start, end),
        max_onsets_per_s=densest,
        longest_silence_s=round(longest_silence, 3),
        tempo_changes=max(0, len(score.tempos) - 1),
        tempo_bpm=[round(min(qpms), 2), round(max(qpms), 2)],
        time_signature_changes=max(0, len(score.time_signatures) - 1),
        kept_tracks=len(kept),
        note_hash=note_hash(pitch, ticks["time"] / tpq, ticks["duration"] / tpq, velocity),
    )
    bad_tempi = [q for q in qpms if not policy.min_tempo_bpm <= q <= policy.max_tempo_bpm]
    if bad_tempi:
        warnings.append(_reason("absurd tempo", f"{len(bad_tempi)} tempo event(s), e.g. {bad_tempi[0]:.1f} bpm"))
    if longest_silence > policy.max_silence_s:
        warnings.append(_reason("very long silence", f"{longest_silence:.1f} s without a sounding note"))
    if densest > policy.max_onsets_per_s:
        warnings.append(_reason("extreme note density", f"{densest} onsets within one second"))

    ids = bars = None
    if tokenizer is not None:
        try:
            ids, bars = tokenizer.encode_with_bars(score)
        except Exception as exc:  # noqa: BLE001 - MidiTok failing on a file is that file's error, not the scan's
            errors.append(_reason("tokenizer failed", f"{type(exc).__name__}: {exc}"))
            return finish()
        pitch_kinds = {"Pitch", "NoteOn"}
        if not any(tokenizer.token_kind(t) in pitch_kinds for t in ids):
            errors.append(_reason("no usable piano notes", "the tokenizer kept no notes (they lie outside its pitch range)"))
            return finish()
        if len(ids) > policy.limit_tokens:
            errors.append(_reason("over the token limit", f"{len(ids):,} tokens, the limit is limit_tokens = {policy.limit_tokens:,}; {_SETTING}"))
            return finish()
        stats["tokens"] = len(ids)
        stats["bars"] = len(bars)
        ids = np.asarray(ids, dtype=np.int32)
        bars = np.asarray(bars, dtype=np.int64)
    return finish(ids, bars)


# ---- the worker pool ----------------------------------------------------------------------------
def _exit_with(owner_pid: int) -> None:
    """Watchdog thread: a worker busy on a huge file must not outlive a scan whose process died."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(owner_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass


def _worker_main(conn, policy_dict: dict, tokenizer_config: dict | None, owner_pid: int) -> None:
    """Worker loop: build the tokenizer once, then inspect one file per request."""
    import signal
    import threading

    # Ctrl-C reaches the whole process group; the parent decides, and stops the workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(owner_pid,), daemon=True).start()
    policy = CheckPolicy(**policy_dict)
    tokenizer = None
    if tokenizer_config is not None:
        from .tokenizer import PianoTokenizer

        tokenizer = PianoTokenizer.from_config(tokenizer_config)
    conn.send(("ready",))
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        index, path, want_ids = task
        try:
            record, ids, bars = inspect_file(path, policy, tokenizer)
        except Exception as exc:  # noqa: BLE001 - a bug in a check must not kill the scan: report it on the file
            record = FileRecord(str(path), "error", [_reason("check failed", f"{type(exc).__name__}: {exc}")],
                                FileStats(traceback=traceback.format_exc(limit=3)))
            ids = bars = None
        conn.send((index, record, ids if want_ids else None, bars if want_ids else None))


@contextmanager
def _safe_path() -> Iterator[None]:
    """Start a worker (or the fork server) without the current folder on its import path.

    A worker's interpreter starts with ``python -c``, which puts the current folder first on
    sys.path, so a user's own random.py or tokenize.py there was imported instead of the standard
    library's; PYTHONSAFEPATH (Python 3.11) leaves it out.
    """
    saved = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONSAFEPATH", None)
        else:
            os.environ["PYTHONSAFEPATH"] = saved


def _context():
    # forkserver: workers fork from a clean server that has already imported the data modules,
    # so they start fast and never inherit the threads of a running UI.
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["engine.data.check", "engine.data.tokenizer", "symusic", "miditok"])
        return ctx
    return mp.get_context("spawn")


class _Worker:
    def __init__(self, ctx, policy: CheckPolicy, tokenizer_config: dict | None):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, asdict(policy), tokenizer_config, os.getpid()), daemon=True)
        with _safe_path():
            self.process.start()
        child.close()
        self.ready = False
        self.task: int | None = None
        self.started = 0.0
        self.created = time.monotonic()

    def kill(self) -> None:
        try:
            self.process.kill()
        finally:
            self.process.join(timeout=5)
            self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=2)
        self.conn.close()


def run_inspections(
    paths: list[Path],
    policy: CheckPolicy,
    *,
    workers: int | None = None,
    tokenizer_config: dict | None = None,
    want_ids: bool = False,
    on_result: Callable[[int, FileRecord, Any, Any], None],
) -> None:
    """Inspect ``paths`` in ``workers`` processes, calling ``on_result(index, record, ids, bars)``
    in this process as each file finishes (in completion order). A file over ``policy.timeout_s``
    or one that kills its worker gets an error record, and the worker is replaced."""
    if not paths:
        return
    workers = max(1, min(workers or default_workers(), len(paths)))
    ctx = _context()
    pool = [_Worker(ctx, policy, tokenizer_config) for _ in range(workers)]
    pending = list(range(len(paths)))[::-1]
    remaining = len(paths)
    startup_limit = max(120.0, policy.timeout_s)  # imports on a loaded machine can take a while
    startup_failures = 0
    try:
        while remaining:
            for w in pool:
                if w.ready and w.task is None and pending:
                    w.task = pending.pop()
                    w.started = time.monotonic()
                    w.conn.send((w.task, str(paths[w.task]), want_ids))
            busy = [w for w in pool if w.task is not None]
            next_deadline = min((w.started + policy.timeout_s for w in busy), default=time.monotonic() + 1.0)
            ready = wait_connections([w.conn for w in pool], timeout=max(0.0, min(1.0, next_deadline - time.monotonic())))
            for i, w in enumerate(pool):
                if w.conn not in ready:
                    continue
                try:
                    message = w.conn.recv()
                except (EOFError, OSError):
                    # the worker died (a parser crash): report its file, start a fresh worker
                    if w.task is not None:
                        w.process.join(timeout=1)
                        on_result(w.task, _failure(paths[w.task], "parser crashed", f"the worker exited with code {w.process.exitcode}"), None, None)
                        remaining -= 1
                    elif not w.ready:
                        startup_failures += 1
                        if startup_failures > 2 * len(pool):
                            raise ScanError("the check workers exit as they start; check that symusic and miditok import in this Python")
                    w.kill()
                    pool[i] = _Worker(ctx, policy, tokenizer_config)
                    continue
                if message[0] == "ready":
                    w.ready = True
                    continue
                index, record, ids, bars = message
                w.task = None
                remaining -= 1
                on_result(index, record, ids, bars)
            now = time.monotonic()
            if all(not w.ready and now - w.created > startup_limit for w in pool):
                raise ScanError(f"the check workers did not start within {startup_limit:.0f} s; "
                                "check that symusic and miditok import in this Python, then try again")
            for i, w in enumerate(pool):
                if w.task is not None and now - w.started > policy.timeout_s:
                    on_result(w.task, _failure(paths[w.task], "timed out", f"parsing took longer than {policy.timeout_s:g} s; the worker was stopped"), None, None)
                    remaining -= 1
                    w.task = None
                    w.kill()
                    pool[i] = _Worker(ctx, policy, tokenizer_config)
    finally:
        for w in pool:
            w.stop()


def _failure(path: Path, category: str, details: str) -> FileRecord:
    return FileRecord(str(path), "error", [_reason(category, details)])


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2)))


# ---- the scan ------------------------------------------------------------------------------------
def mark_duplicates(records: list[FileRecord]) -> None:
    """Files with the same note data as an earlier file (by path order) get a duplicate warning."""
    first: dict[str, str] = {}
    for record in sorted(records, key=lambda r: r.path):
        digest = record.stats.note_hash
        if not record.usable or digest is None:
            continue
        if digest in first:
            record.reasons.append(_reason("duplicate", f"same notes as {first[digest]}"))
            if record.status == "ok":
                record.status = "warning"
        else:
            first[digest] = record.path


def summarize(records: list[FileRecord], root: str = "", piano_policy: str = DEFAULT_PIANO_POLICY, workers: int | None = None,
              elapsed_s: float | None = None) -> ScanSummary:
    counts = Counter(r.status for r in records)
    categories = Counter()
    for r in records:
        categories.update({reason.split(":", 1)[0] for reason in r.reasons})
    usable = [r.stats for r in records if r.usable]
    return ScanSummary(
        files=len(records),
        status={s: counts.get(s, 0) for s in STATUSES},
        hours=round(sum(s.duration_s or 0.0 for s in usable) / 3600.0, 4),
        notes=int(sum(s.notes or 0 for s in usable)),
        tokens=int(sum(s.tokens or 0 for s in usable)),
        reasons=[ReasonCount(reason, n) for reason, n in sorted(categories.items(), key=lambda kv: (-kv[1], kv[0]))],
        root=root, piano_policy=piano_policy, workers=workers, elapsed_s=elapsed_s,
    )


def scan(
    folder: str | Path,
    workers: int | None = None,
    policy: CheckPolicy | dict | None = None,
    on_progress: FileProgress | None = None,
    tokenizer_config: dict | None = None,
    paths: Iterable[Path] | None = None,
) -> ScanReport:
    """Check every MIDI file under ``folder``; ``on_progress(done, total, record)`` after each file.

    Raises ``ScanError`` only when the scan cannot run (missing folder); bad files end up in the
    report. Tokens are counted with ``tokenizer_config`` (default tokenizer when None) unless the
    policy turns ``tokenize`` off.
    """
    policy = policy if isinstance(policy, CheckPolicy) else CheckPolicy.from_dict(policy)
    files = sorted(paths) if paths is not None else find_midi_files(folder)
    if policy.tokenize and tokenizer_config is None:
        from .tokenizer import PianoTokenizer

        tokenizer_config = PianoTokenizer.from_config({"piano_policy": policy.piano_policy}).to_config()
    records: list[FileRecord | None] = [None] * len(files)
    done = 0
    began = time.perf_counter()

    def collect(index: int, record: FileRecord, _ids, _bars) -> None:
        nonlocal done
        records[index] = record
        done += 1
        if on_progress is not None:
            on_progress(done, len(files), record)

    run_inspections(files, policy, workers=workers, tokenizer_config=tokenizer_config if policy.tokenize else None,
                    on_result=collect)
    final = [r for r in records if r is not None]
    mark_duplicates(final)
    summary = summarize(final, root=str(folder), piano_policy=policy.piano_policy,
                        workers=max(1, min(workers or default_workers(), max(1, len(files)))),
                        elapsed_s=round(time.perf_counter() - began, 3))
    return ScanReport(final, summary)

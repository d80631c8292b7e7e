"""A scrolling piano roll: played notes left of the playhead, buffered (scheduled) notes right of it."""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from itertools import groupby

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
_LABEL_W = 5
# grid cell kinds: 0 empty, 1 played, 2 buffered, 3 yours (a pianist playing with the model)
_CELL_CHAR = (" ", "█", "▒", "█")
_CELL_STYLE = ("", "green", "cyan dim", "magenta")


def note_name(pitch: int) -> str:
    return f"{_NAMES[pitch % 12]}{pitch // 12 - 1}"


@dataclass
class RollNote:
    pitch: int
    start: float  # seconds on the performance clock
    end: float | None  # None while the note-off is not yet known
    velocity: int = 80
    yours: bool = False  # played by the pianist, not the model


def render_piano_roll(notes: list[RollNote], now: float, width: int, height: int,
                      seconds_per_col: float = 0.05, playhead_frac: float = 0.7) -> Text:
    width, height = max(width, _LABEL_W + 10), max(height, 2)
    cols = width - _LABEL_W
    head = int(cols * playhead_frac)
    t0 = now - head * seconds_per_col
    t1 = t0 + cols * seconds_per_col
    visible = [n for n in notes if n.start < t1 and (n.end is None or n.end > t0)]
    if visible:
        lo, hi = min(n.pitch for n in visible), max(n.pitch for n in visible)
    else:
        lo, hi = 48, 72
    span = max(hi - lo + 1, height)
    per_row = -(-span // height)  # ceil: semitones folded into one row
    lo = max(0, (lo + hi) // 2 - per_row * height // 2)
    grid = [[0] * cols for _ in range(height)]  # 0 empty, 1 played, 2 buffered, 3 yours
    for n in visible:
        row = height - 1 - (n.pitch - lo) // per_row
        if not 0 <= row < height:
            continue
        c0 = max(0, int((n.start - t0) / seconds_per_col))
        end = n.end if n.end is not None else max(now, n.start + seconds_per_col)
        c1 = min(cols, max(c0 + 1, int((end - t0) / seconds_per_col)))
        for c in range(c0, c1):
            grid[row][c] = 3 if n.yours else max(grid[row][c], 2 if c >= head else 1)
    text = Text()
    for row in range(height):
        pitch = lo + (height - 1 - row) * per_row
        label = note_name(pitch) if row % 2 == 0 or per_row > 1 else ""
        text.append(f"{label:>{_LABEL_W - 1}}│", style="dim")
        line = grid[row]
        # one append per run of equal cells keeps a redraw cheap (it happens many times a second)
        _append_runs(text, line[:head])
        if head < cols:
            text.append("┃", style="bold red")
        _append_runs(text, line[head + 1:])
        if row < height - 1:
            text.append("\n")
    return text


def _append_runs(text: Text, cells: list[int]) -> None:
    for kind, run in groupby(cells):
        text.append(_CELL_CHAR[kind] * sum(1 for _ in run), style=_CELL_STYLE[kind])


class PianoRoll(Widget):
    """Thread-safe note buffer (the performance thread feeds it) plus a timer-driven redraw."""

    DEFAULT_CSS = "PianoRoll { height: 1fr; min-height: 4; }"

    now: reactive[float] = reactive(0.0)

    def __init__(self, keep_seconds: float = 30.0, yours_channel: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.yours_channel = yours_channel  # notes on this channel are the pianist's (drawn in another colour)
        self._lock = threading.Lock()
        self._notes: deque[RollNote] = deque()
        self._open: dict[tuple[int, int], RollNote] = {}
        self.keep_seconds = keep_seconds
        self.seconds_per_col = 0.05

    def note_event(self, time_s: float, kind: str, pitch: int, velocity: int = 0, channel: int = 0) -> None:
        """Feed a scheduled MIDI event (note_on / note_off) from any thread."""
        with self._lock:
            key = (channel, pitch)
            if kind == "note_on" and velocity > 0:
                note = RollNote(pitch, time_s, None, velocity, yours=channel == self.yours_channel)
                self._notes.append(note)
                self._open[key] = note
            elif kind in ("note_on", "note_off"):
                note = self._open.pop(key, None)
                if note is not None:
                    note.end = time_s
            while self._notes and self._notes[0].end is not None and self._notes[0].end < time_s - self.keep_seconds:
                self._notes.popleft()

    def clear(self) -> None:
        with self._lock:
            self._notes.clear()
            self._open.clear()
        self.refresh()

    @property
    def note_count(self) -> int:
        with self._lock:
            return len(self._notes)

    def snapshot(self) -> list[RollNote]:
        with self._lock:
            return list(self._notes)

    def render(self) -> Text:
        return render_piano_roll(self.snapshot(), self.now, self.content_size.width,
                                 self.content_size.height, self.seconds_per_col)

"""Structure of a piece measured in its own bars: self-reuse and key.

Notes here are placed in bars (``BarNotes``: onset and duration in bars, bar 0 the first), read
from a decoded score with its time signatures, so a 3/4 bar and a 4/4 bar each count as one.

- ``self_reuse``: how much the music reuses its own material. For each 2-bar window of the
  continuation, the best similarity to any earlier 2-bar window (the prompt's included, at any
  whole-bar offset); similarity is the Jaccard index of the two windows' note sets, a note being
  (onset within the window on a 1/48-bar grid, pitch). 1 is an exact repeat, 0 nothing shared.
- ``key_correlation``: per 4-bar window, the best Pearson correlation of its duration-weighted
  pitch-class histogram with the 24 Krumhansl-Kessler key profiles; the mean over windows.
- ``in_key_share``: the share of notes whose pitch class belongs to the key detected on the whole
  span (major scale; minor: natural minor plus the leading tone).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRID_PER_BAR = 48  # 1/48 bar: sixteenths and triplets of a 4/4 bar both land on it
REUSE_WINDOW_BARS = 2
KEY_WINDOW_BARS = 4
# Krumhansl & Kessler (1982) probe-tone ratings, tonic first
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10, 11)  # natural minor and the leading tone


@dataclass
class BarNotes:
    onset: np.ndarray  # in bars from the piece's first bar line
    duration: np.ndarray  # in bars
    pitch: np.ndarray

    def __post_init__(self) -> None:
        self.onset = np.asarray(self.onset, dtype=np.float64)
        self.duration = np.asarray(self.duration, dtype=np.float64)
        self.pitch = np.asarray(self.pitch, dtype=np.int64)

    def between(self, start: float, stop: float) -> "BarNotes":
        keep = (self.onset >= start - 1e-9) & (self.onset < stop - 1e-9)
        return BarNotes(self.onset[keep], self.duration[keep], self.pitch[keep])

    @classmethod
    def from_score(cls, score) -> "BarNotes":
        """Every note of a symusic Score (ticks), placed in bars by its time signatures."""
        from engine.data.humanize import bar_lines

        parts = [t.notes.numpy() for t in score.tracks if len(t.notes)]
        if not parts:
            return cls(np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64))
        time = np.concatenate([p["time"] for p in parts]).astype(np.float64)
        end = time + np.concatenate([p["duration"] for p in parts])
        lines = bar_lines(score).astype(np.float64)
        step = np.diff(lines, append=lines[-1] + (lines[-1] - lines[-2] if len(lines) > 1 else score.ticks_per_quarter * 4))

        def in_bars(ticks: np.ndarray) -> np.ndarray:
            bar = np.clip(np.searchsorted(lines, ticks, side="right") - 1, 0, len(lines) - 1)
            return bar + (ticks - lines[bar]) / step[bar]

        onset = in_bars(time)
        return cls(onset, in_bars(end) - onset, np.concatenate([p["pitch"] for p in parts]))


def _window_set(notes: BarNotes, start: int, bars: int) -> set[tuple[int, int]]:
    inside = notes.between(start, start + bars)
    return set(zip(np.round((inside.onset - start) * GRID_PER_BAR).astype(int).tolist(), inside.pitch.tolist()))


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def self_reuse(notes: BarNotes, from_bar: int, to_bar: int | None = None, window: int = REUSE_WINDOW_BARS) -> float:
    """Mean over the 2-bar windows starting at ``from_bar``, ``from_bar + 2``, ... (up to ``to_bar``)
    of the best similarity to a window that ends at or before it starts. NaN when no window has notes."""
    last = int(np.ceil(notes.onset.max())) if len(notes.onset) else 0
    to_bar = last if to_bar is None else to_bar
    scores = []
    for b in range(from_bar, to_bar - window + 1, window):
        here = _window_set(notes, b, window)
        if not here:
            continue
        earlier = [jaccard(here, _window_set(notes, a, window)) for a in range(0, b - window + 1)]
        scores.append(max(earlier, default=0.0))
    return float(np.mean(scores)) if scores else float("nan")


def _pitch_class_weights(notes: BarNotes) -> np.ndarray:
    weights = np.zeros(12)
    np.add.at(weights, notes.pitch % 12, np.maximum(notes.duration, 1.0 / GRID_PER_BAR))
    return weights


def key_scores(weights: np.ndarray) -> np.ndarray:
    """[24] Pearson correlations of a pitch-class histogram with C..B major, then C..B minor."""
    if np.ptp(weights) == 0:
        return np.zeros(24)
    rows = [np.roll(KK_MAJOR, tonic) for tonic in range(12)] + [np.roll(KK_MINOR, tonic) for tonic in range(12)]
    return np.array([np.corrcoef(weights, row)[0, 1] for row in rows])


def detect_key(notes: BarNotes) -> tuple[int, str, float]:
    """(tonic pitch class, "major" | "minor", correlation) of the best-matching key profile."""
    scores = key_scores(_pitch_class_weights(notes))
    best = int(np.argmax(scores))
    return best % 12, "major" if best < 12 else "minor", float(scores[best])


def in_key_share(notes: BarNotes) -> float:
    """Share of notes in the scale of the detected key (NaN without notes)."""
    if len(notes.pitch) == 0:
        return float("nan")
    tonic, mode, _ = detect_key(notes)
    scale = {(tonic + step) % 12 for step in (MAJOR_SCALE if mode == "major" else MINOR_SCALE)}
    return float(np.mean([p % 12 in scale for p in notes.pitch.tolist()]))


def key_correlation(notes: BarNotes, from_bar: int = 0, to_bar: int | None = None, window: int = KEY_WINDOW_BARS) -> float:
    """Mean over 4-bar windows (from ``from_bar``) of the best key-profile correlation; NaN if none has notes."""
    last = int(np.ceil(notes.onset.max())) if len(notes.onset) else 0
    to_bar = last if to_bar is None else to_bar
    values = []
    for b in range(from_bar, max(to_bar, from_bar + 1), window):
        inside = notes.between(b, b + window)
        if len(inside.pitch):
            values.append(float(key_scores(_pitch_class_weights(inside)).max()))
    return float(np.mean(values)) if values else float("nan")

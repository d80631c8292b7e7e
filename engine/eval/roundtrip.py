"""How much of a performance survives tokenization: encode, decode, and compare in seconds.

``roundtrip(tokenizer, score)`` matches every note of the piece (as the tokenizer's piano policy
extracts it) with a decoded note of the same pitch, nearest onset first, and reports the onset,
duration and velocity errors of the matched notes, the notes lost, the sustain-pedal presses kept
(a decoded press within ``PEDAL_TOLERANCE_S`` of the original's) and the tokens spent per note.
Everything is measured in seconds through each score's own tempo map, so a tokenizer that stores
tempo coarsely pays for it here.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

MATCH_WINDOW_S = 0.25  # a decoded note further than this from every original note of its pitch is not a match
PEDAL_TOLERANCE_S = 0.05


@dataclass
class RoundTrip:
    notes: int = 0
    matched: int = 0
    tokens: int = 0
    pedals: int = 0
    pedals_kept: int = 0
    onset_error_ms: list[float] = field(default_factory=list)
    duration_error_ms: list[float] = field(default_factory=list)
    velocity_error: list[float] = field(default_factory=list)

    def __add__(self, other: "RoundTrip") -> "RoundTrip":
        return RoundTrip(self.notes + other.notes, self.matched + other.matched, self.tokens + other.tokens,
                         self.pedals + other.pedals, self.pedals_kept + other.pedals_kept,
                         self.onset_error_ms + other.onset_error_ms, self.duration_error_ms + other.duration_error_ms,
                         self.velocity_error + other.velocity_error)

    @staticmethod
    def _pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    def summary(self) -> dict:
        return {
            "notes": self.notes,
            "notes_lost_pct": 100.0 * (self.notes - self.matched) / self.notes if self.notes else float("nan"),
            "onset_p50_ms": self._pct(self.onset_error_ms, 50), "onset_p95_ms": self._pct(self.onset_error_ms, 95),
            "duration_p50_ms": self._pct(self.duration_error_ms, 50), "duration_p95_ms": self._pct(self.duration_error_ms, 95),
            "velocity_mean": float(np.mean(self.velocity_error)) if self.velocity_error else float("nan"),
            "velocity_p95": self._pct(self.velocity_error, 95),
            "pedals": self.pedals,
            "pedals_kept_pct": 100.0 * self.pedals_kept / self.pedals if self.pedals else float("nan"),
            "tokens_per_note": self.tokens / self.notes if self.notes else float("nan"),
        }


def _notes_in_seconds(score) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(onset, duration, pitch, velocity) of every note of every track, in seconds."""
    seconds = score.to("second")
    parts = [t.notes.numpy() for t in seconds.tracks if len(t.notes)]
    if not parts:
        empty = np.zeros(0)
        return empty, empty, empty.astype(int), empty
    cat = {k: np.concatenate([p[k] for p in parts]) for k in ("time", "duration", "pitch", "velocity")}
    return cat["time"], cat["duration"], cat["pitch"].astype(int), cat["velocity"].astype(float)


def _pedal_downs(score) -> np.ndarray:
    seconds = score.to("second")
    return np.sort(np.array([p.time for t in seconds.tracks for p in t.pedals], dtype=np.float64))


def match_notes(original, decoded, window: float = MATCH_WINDOW_S) -> list[tuple[int, int]]:
    """Pairs (original index, decoded index): per pitch, in onset order, each original note takes
    the unused decoded note nearest in onset within ``window`` seconds.

    ``original`` and ``decoded`` are (onset, duration, pitch, velocity) arrays as from a score.
    """
    by_pitch: dict[int, list[int]] = defaultdict(list)
    for j in np.argsort(decoded[0], kind="stable").tolist():
        by_pitch[int(decoded[2][j])].append(j)
    used: set[int] = set()
    pairs = []
    for i in np.argsort(original[0], kind="stable").tolist():
        candidates = [j for j in by_pitch.get(int(original[2][i]), []) if j not in used]
        if not candidates:
            continue
        j = min(candidates, key=lambda c: abs(decoded[0][c] - original[0][i]))
        if abs(decoded[0][j] - original[0][i]) <= window:
            used.add(j)
            pairs.append((i, j))
    return pairs


def compare(original_score, decoded_score, tokens: int = 0) -> RoundTrip:
    """The round-trip errors between a piece and its decoded tokens (both symusic Scores)."""
    original, decoded = _notes_in_seconds(original_score), _notes_in_seconds(decoded_score)
    pairs = match_notes(original, decoded)
    result = RoundTrip(notes=len(original[0]), matched=len(pairs), tokens=tokens)
    for i, j in pairs:
        result.onset_error_ms.append(1000.0 * abs(decoded[0][j] - original[0][i]))
        result.duration_error_ms.append(1000.0 * abs(decoded[1][j] - original[1][i]))
        result.velocity_error.append(abs(decoded[3][j] - original[3][i]))
    downs, back = _pedal_downs(original_score), _pedal_downs(decoded_score)
    result.pedals = len(downs)
    result.pedals_kept = int(sum(bool(len(back)) and float(np.min(np.abs(back - d))) <= PEDAL_TOLERANCE_S for d in downs))
    return result


def roundtrip(tokenizer, score) -> RoundTrip:
    """Encode ``score`` with ``tokenizer``, decode it, and compare with the piano part of the piece
    as given (before any re-timing the tokenizer does)."""
    from engine.data.tokenizer import extract_piano

    ids = tokenizer.encode_score(score)
    return compare(extract_piano(score, tokenizer.piano_policy), tokenizer.decode(ids), tokens=len(ids))

"""Musical metrics on note lists: one performance's features, and how two sets of them compare.

A performance is a list of notes ``(onset_s, duration_s, pitch, velocity)`` plus sustain-pedal
intervals ``(time_s, duration_s)``, all in seconds. Every function here is pure numpy; nothing
needs a tokenizer or a model, so the same numbers come out for a MIDI file, a decoded token
sequence or a hand-written test list.

Distributions and their comparison
----------------------------------
Histograms (pitch class, pitch, velocity, inter-onset interval, duration, polyphony) are pooled
over all notes of a set of performances. Scalar features (note density, mean polyphony, pitch
range, pitch-class entropy, pedal use) give one value per performance; a set of them becomes a
distribution through a Gaussian kernel density estimate on a grid shared by both sets.

Two distributions ``p`` (real) and ``q`` (generated) are compared by
- the overlapping area ``OA = sum_i min(p_i, q_i)`` (1 when identical, 0 when disjoint), and
- ``KL(p || q)`` in nats, after mixing both with 1 % of the uniform distribution
  (``p' = 0.99 p + 0.01 / K``): a bin the generated set never uses then costs a bounded
  ``log(100 K)`` instead of infinity, and identical distributions still give exactly 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

# Notes closer together than this start "at the same time" (a chord), not one after the other.
CHORD_TOLERANCE_S = 0.001
# Notes longer than this are counted as stuck (a note-off that never came, in effect).
STUCK_NOTE_S = 10.0
KL_UNIFORM_MIX = 0.01
POLYPHONY_LEVELS = 16  # the last level collects 16 and more
VELOCITY_BIN_WIDTH = 8  # 16 bins over 0..127
LOWEST_KEY, HIGHEST_KEY = 21, 108  # the 88 keys of a piano
# Half-octave (x sqrt 2) time bins from 1/64 s to 8 s: musically even steps from a fast trill
# to a held chord; values outside fall into the first or last bin.
LOG_TIME_EDGES = 2.0 ** np.arange(-6.0, 3.0 + 1e-9, 0.5)
KDE_GRID_POINTS = 200

PITCH_CLASS_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


@dataclass
class Performance:
    """Notes and pedal intervals of one piece (or one continuation), in seconds, onset-sorted."""

    onset: np.ndarray
    duration: np.ndarray
    pitch: np.ndarray
    velocity: np.ndarray
    pedal_time: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pedal_duration: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # The stretch of time the performance covers; None means "first onset to last release".
    span_s: float | None = None

    def __post_init__(self) -> None:
        onset = np.asarray(self.onset, dtype=np.float64).reshape(-1)
        duration = np.asarray(self.duration, dtype=np.float64).reshape(-1)
        pitch = np.asarray(self.pitch, dtype=np.int64).reshape(-1)
        velocity = np.asarray(self.velocity, dtype=np.int64).reshape(-1)
        if not (len(onset) == len(duration) == len(pitch) == len(velocity)):
            raise ValueError("onset, duration, pitch and velocity must have the same length")
        order = np.lexsort((pitch, onset))  # by onset, then pitch: a stable order for chords
        self.onset, self.duration = onset[order], np.maximum(duration[order], 0.0)
        self.pitch, self.velocity = pitch[order], velocity[order]
        self.pedal_time = np.asarray(self.pedal_time, dtype=np.float64).reshape(-1)
        self.pedal_duration = np.maximum(np.asarray(self.pedal_duration, dtype=np.float64).reshape(-1), 0.0)

    @classmethod
    def from_notes(
        cls,
        notes: Iterable[Sequence[float]],
        pedals: Iterable[Sequence[float]] = (),
        span_s: float | None = None,
    ) -> "Performance":
        """From ``(onset_s, duration_s, pitch, velocity)`` tuples and ``(time_s, duration_s)`` pedals."""
        arr = np.asarray(list(notes), dtype=np.float64).reshape(-1, 4)
        ped = np.asarray(list(pedals), dtype=np.float64).reshape(-1, 2)
        return cls(arr[:, 0], arr[:, 1], arr[:, 2].round(), arr[:, 3].round(), ped[:, 0], ped[:, 1], span_s)

    @classmethod
    def from_score(cls, score, span_s: float | None = None) -> "Performance":
        """From a symusic Score (any time unit); every non-drum track is merged (piano music)."""
        if str(score.ttype).lower() != "second":
            score = score.to("second")
        cols: dict[str, list[np.ndarray]] = {"time": [], "duration": [], "pitch": [], "velocity": []}
        ped_t: list[np.ndarray] = []
        ped_d: list[np.ndarray] = []
        for track in score.tracks:
            if track.is_drum:
                continue
            if len(track.notes):
                arrays = track.notes.numpy()
                for key in cols:
                    # symusic hands pitch/velocity back as int8; widen before any arithmetic
                    cols[key].append(np.asarray(arrays[key], dtype=np.float64))
            if len(track.pedals):
                pedals = track.pedals.numpy()
                ped_t.append(np.asarray(pedals["time"], dtype=np.float64))
                ped_d.append(np.asarray(pedals["duration"], dtype=np.float64))

        def cat(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0)

        return cls(
            cat(cols["time"]), cat(cols["duration"]), cat(cols["pitch"]), cat(cols["velocity"]),
            cat(ped_t), cat(ped_d), span_s,
        )

    @classmethod
    def from_midi(cls, path: str | Path) -> "Performance":
        import symusic  # only MIDI files need it

        return cls.from_score(symusic.Score(str(path)))

    @property
    def n_notes(self) -> int:
        return int(len(self.onset))

    @property
    def offset(self) -> np.ndarray:
        return self.onset + self.duration

    def span(self) -> float:
        """Seconds covered: the explicit span if one was given, else first onset to last release."""
        if self.span_s is not None:
            return float(self.span_s)
        if self.n_notes == 0:
            return 0.0
        return float(self.offset.max() - self.onset.min())


# --- single-performance features -------------------------------------------------------------

def _normalise(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts)


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy (bits) of a histogram; NaN for an empty one."""
    p = _normalise(counts)
    if p.sum() == 0:
        return math.nan
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def pitch_class_histogram(perf: Performance) -> np.ndarray:
    return np.bincount(perf.pitch % 12, minlength=12).astype(np.float64)


def pitch_class_entropy(perf: Performance) -> float:
    return entropy_bits(pitch_class_histogram(perf))


def pitch_histogram(perf: Performance) -> np.ndarray:
    """Counts per piano key (A0..C8); pitches outside the keyboard fold onto its ends."""
    keys = np.clip(perf.pitch, LOWEST_KEY, HIGHEST_KEY) - LOWEST_KEY
    return np.bincount(keys, minlength=HIGHEST_KEY - LOWEST_KEY + 1).astype(np.float64)


def pitch_range(perf: Performance) -> float:
    """Highest minus lowest pitch, in semitones (NaN without notes)."""
    if perf.n_notes == 0:
        return math.nan
    return float(perf.pitch.max() - perf.pitch.min())


def velocity_histogram(perf: Performance) -> np.ndarray:
    bins = np.clip(perf.velocity, 0, 127) // VELOCITY_BIN_WIDTH
    return np.bincount(bins, minlength=128 // VELOCITY_BIN_WIDTH).astype(np.float64)


def _log_time_histogram(seconds: np.ndarray) -> np.ndarray:
    n_bins = len(LOG_TIME_EDGES) - 1
    idx = np.clip(np.searchsorted(LOG_TIME_EDGES, seconds, side="right") - 1, 0, n_bins - 1)
    return np.bincount(idx, minlength=n_bins).astype(np.float64)


def inter_onset_intervals(perf: Performance) -> np.ndarray:
    """Seconds between successive distinct onsets (the notes of a chord share one onset)."""
    if perf.n_notes < 2:
        return np.zeros(0)
    gaps = np.diff(perf.onset)
    return gaps[gaps >= CHORD_TOLERANCE_S]


def ioi_histogram(perf: Performance) -> np.ndarray:
    return _log_time_histogram(inter_onset_intervals(perf))


def duration_histogram(perf: Performance) -> np.ndarray:
    return _log_time_histogram(perf.duration)


def note_density(perf: Performance) -> float:
    """Notes per second over the performance's span (NaN when the span is empty)."""
    span = perf.span()
    return perf.n_notes / span if span > 0 else math.nan


def _sounding_segments(perf: Performance) -> tuple[np.ndarray, np.ndarray]:
    """(number of notes sounding, seconds) for each stretch between note on/off events."""
    if perf.n_notes == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    times = np.concatenate([perf.onset, perf.offset])
    deltas = np.concatenate([np.ones(perf.n_notes, np.int64), -np.ones(perf.n_notes, np.int64)])
    # at equal times releases come first, so legato (one note ends as the next begins) is not overlap
    order = np.lexsort((deltas, times))
    times, deltas = times[order], deltas[order]
    level = np.cumsum(deltas)[:-1]
    seconds = np.diff(times)
    return level, seconds


def polyphony_histogram(perf: Performance) -> np.ndarray:
    """Seconds spent with 1, 2, ..., 16+ notes sounding (silence is not counted)."""
    level, seconds = _sounding_segments(perf)
    sounding = level > 0
    idx = np.minimum(level[sounding], POLYPHONY_LEVELS) - 1
    return np.bincount(idx, weights=seconds[sounding], minlength=POLYPHONY_LEVELS).astype(np.float64)


def polyphony_mean(perf: Performance) -> float:
    """Time-weighted mean number of notes sounding while anything sounds (a 3-note chord gives 3)."""
    level, seconds = _sounding_segments(perf)
    sounding = level > 0
    total = seconds[sounding].sum()
    return float((level[sounding] * seconds[sounding]).sum() / total) if total > 0 else math.nan


def polyphony_max(perf: Performance) -> int:
    level, seconds = _sounding_segments(perf)
    # zero-length stretches (events at one instant) do not sound
    level = level[seconds > 0]
    return int(level.max()) if len(level) else 0


def _interval_union_seconds(start: np.ndarray, end: np.ndarray) -> float:
    """Total length of the union of [start, end) intervals (overlapping pedal presses count once)."""
    if len(start) == 0:
        return 0.0
    order = np.argsort(start)
    start, end = start[order], end[order]
    reach = np.maximum.accumulate(end)
    # a new stretch starts where an interval begins after everything before it has ended
    new = np.concatenate([[True], start[1:] > reach[:-1]])
    group = np.cumsum(new) - 1
    group_start = start[new]
    group_end = np.zeros(group.max() + 1)
    np.maximum.at(group_end, group, end)
    return float((group_end - group_start).sum())


def pedal_fraction(perf: Performance) -> float:
    """Share of the performance's time with the sustain pedal down (0..1; NaN for an empty span)."""
    span = perf.span()
    if span <= 0:
        return math.nan
    if len(perf.pedal_time) == 0:
        return 0.0
    # the span starts at the first onset (or the first press when there are no notes)
    lo = perf.onset.min() if perf.n_notes else perf.pedal_time.min()
    hi = lo + span
    start = np.clip(perf.pedal_time, lo, hi)
    end = np.clip(perf.pedal_time + perf.pedal_duration, lo, hi)
    return float(min(_interval_union_seconds(start, end) / span, 1.0))


def pedal_presses_per_minute(perf: Performance) -> float:
    span = perf.span()
    return len(perf.pedal_time) / (span / 60.0) if span > 0 else math.nan


def stuck_notes(perf: Performance, limit_s: float = STUCK_NOTE_S) -> int:
    """Notes held longer than ``limit_s`` seconds."""
    return int((perf.duration > limit_s).sum())


# The per-performance scalars that get a distribution (KDE) across a set, in report order.
SCALAR_FEATURES = {
    "note_density": note_density,
    "polyphony": polyphony_mean,
    "pitch_range": pitch_range,
    "pitch_class_entropy": pitch_class_entropy,
    "pedal_use": pedal_fraction,
}

# The pooled histograms, with the label of each bin (for the JSON and the plot).
HISTOGRAMS = {
    "pitch_class": (pitch_class_histogram, list(PITCH_CLASS_NAMES)),
    "pitch": (pitch_histogram, list(range(LOWEST_KEY, HIGHEST_KEY + 1))),
    "velocity": (velocity_histogram, [f"{v}-{v + VELOCITY_BIN_WIDTH - 1}" for v in range(0, 128, VELOCITY_BIN_WIDTH)]),
    "ioi": (ioi_histogram, [f"{e:.3g}" for e in LOG_TIME_EDGES[:-1]]),
    "duration": (duration_histogram, [f"{e:.3g}" for e in LOG_TIME_EDGES[:-1]]),
    "polyphony": (polyphony_histogram, [str(i) for i in range(1, POLYPHONY_LEVELS)] + [f"{POLYPHONY_LEVELS}+"]),
}


def performance_features(perf: Performance) -> dict:
    """Every scalar feature of one performance (JSON-able; NaN where undefined)."""
    out = {name: fn(perf) for name, fn in SCALAR_FEATURES.items()}
    out.update(
        notes=perf.n_notes,
        seconds=perf.span(),
        polyphony_max=polyphony_max(perf),
        pedal_presses_per_min=pedal_presses_per_minute(perf),
        stuck_notes=stuck_notes(perf),
    )
    return out


# --- comparing two distributions -------------------------------------------------------------

def overlapping_area(p: np.ndarray, q: np.ndarray) -> float:
    """Sum of the bin-wise minimum of two normalised histograms (NaN if either is empty)."""
    p, q = _normalise(p), _normalise(q)
    if p.sum() == 0 or q.sum() == 0:
        return math.nan
    return float(np.minimum(p, q).sum())


def kl_divergence(p: np.ndarray, q: np.ndarray, uniform_mix: float = KL_UNIFORM_MIX) -> float:
    """KL(p || q) in nats, both smoothed by mixing in ``uniform_mix`` of the uniform distribution."""
    p, q = _normalise(p), _normalise(q)
    if p.sum() == 0 or q.sum() == 0:
        return math.nan
    k = len(p)
    p = (1.0 - uniform_mix) * p + uniform_mix / k
    q = (1.0 - uniform_mix) * q + uniform_mix / k
    return float(max((p * np.log(p / q)).sum(), 0.0))


def _bandwidth(values: np.ndarray, floor: float) -> float:
    """Silverman's rule of thumb, floored so a set of identical values still has a width."""
    n = len(values)
    std = values.std(ddof=1) if n > 1 else 0.0
    iqr = np.subtract(*np.percentile(values, [75, 25])) / 1.34 if n > 1 else 0.0
    spread = min(std, iqr) if iqr > 0 else std
    return max(0.9 * spread * n ** -0.2, floor)


def kde_pair(real: Sequence[float], generated: Sequence[float], points: int = KDE_GRID_POINTS):
    """Gaussian KDEs of two sets of scalars on one shared grid, each normalised to sum 1.

    Returns ``(grid, p_real, q_generated)``; the densities are zeros when a set has no finite value.
    """
    r = np.asarray([v for v in real if v is not None and np.isfinite(v)], dtype=np.float64)
    g = np.asarray([v for v in generated if v is not None and np.isfinite(v)], dtype=np.float64)
    pooled = np.concatenate([r, g])
    if len(pooled) == 0:
        return np.zeros(points), np.zeros(points), np.zeros(points)
    lo, hi = pooled.min(), pooled.max()
    floor = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(lo), 1.0)
    widths = [_bandwidth(x, floor) for x in (r, g) if len(x)]
    pad = 4.0 * max(widths)
    grid = np.linspace(lo - pad, hi + pad, points)

    def density(x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros(points)
        h = _bandwidth(x, floor)
        d = np.exp(-0.5 * ((grid[:, None] - x[None, :]) / h) ** 2).sum(axis=1)
        return d / d.sum()

    return grid, density(r), density(g)


def _summary(values: Sequence[float]) -> dict:
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if len(finite) == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(len(finite))}


def set_histograms(perfs: Sequence[Performance]) -> dict[str, np.ndarray]:
    """Each histogram pooled (summed) over a set of performances."""
    return {name: sum((fn(p) for p in perfs), np.zeros(len(labels))) for name, (fn, labels) in HISTOGRAMS.items()}


def compare_sets(real: Sequence[Performance], generated: Sequence[Performance]) -> dict:
    """Compare generated performances with real ones: every scalar feature and histogram, with OA and KL.

    Returns ``{"features": {name: {"real": {mean,std,n}, "generated": {...}, "oa", "kl_nats",
    "grid", "real_density", "generated_density"}}, "histograms": {name: {"labels", "real",
    "generated", "oa", "kl_nats"}}}`` with histograms as probabilities.
    """
    real_rows = [performance_features(p) for p in real]
    gen_rows = [performance_features(p) for p in generated]
    features = {}
    for name in SCALAR_FEATURES:
        r = [row[name] for row in real_rows]
        g = [row[name] for row in gen_rows]
        grid, p, q = kde_pair(r, g)
        features[name] = {
            "real": _summary(r),
            "generated": _summary(g),
            "oa": overlapping_area(p, q),
            "kl_nats": kl_divergence(p, q),
            "grid": grid.tolist(),
            "real_density": p.tolist(),
            "generated_density": q.tolist(),
        }
    real_h, gen_h = set_histograms(real), set_histograms(generated)
    histograms = {}
    for name, (_, labels) in HISTOGRAMS.items():
        histograms[name] = {
            "labels": labels,
            "real": _normalise(real_h[name]).tolist(),
            "generated": _normalise(gen_h[name]).tolist(),
            "oa": overlapping_area(real_h[name], gen_h[name]),
            "kl_nats": kl_divergence(real_h[name], gen_h[name]),
        }
    return {"features": features, "histograms": histograms}

"""A performance-like test set: real pieces played as a pianist's recording would store them.

Performance MIDI (MAESTRO, GiantMIDI-Piano, your own playing) has free timing over one nominal
tempo, the sustain pedal and the full velocity range; the demo corpus is quantised score MIDI with
flat velocities. ``humanize`` turns a score into such a performance with a fixed seed:
- rubato: the local speed swings smoothly (phrase-long arcs plus a slower random drift);
- onset jitter: every note moves by a few tens of milliseconds (normal, clipped at 2.5 s.d.), so a
  chord's notes no longer start together;
- articulation: each note keeps 80-100 % of its performed length;
- velocity curves: phrase-long crescendi and diminuendi over most of the range, with per-note noise;
- pedalling: the sustain pedal goes down just after most bar lines and up just before the next.
The result is written like a recording: one 120 qpm tempo, 480 ticks per quarter, a 4/4 meta only.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import symusic

from .tokenizer import extract_piano

NOMINAL_QPM = 120.0
RECORDING_TPQ = 480


@dataclass(frozen=True)
class HumanizeOptions:
    rubato: float = 0.12  # peak deviation of the local speed from the score's (fraction)
    phrase_s: float = 8.0  # seconds per rubato and dynamics arc
    jitter_ms: float = 20.0  # onset jitter, standard deviation
    velocity_centre: float = 64.0
    velocity_swing: float = 34.0  # the phrase curve spans centre +- swing
    velocity_noise: float = 7.0
    pedal_share: float = 0.75  # share of bars that get a pedal press


def piece_seed(name: str, seed: int) -> int:
    """A per-piece seed that does not depend on the order pieces are read in."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _seconds_of_ticks(score: symusic.Score, ticks: np.ndarray) -> np.ndarray:
    """Seconds at the given ticks under the score's tempo map (symusic converts a probe track)."""
    probe = symusic.Score(score.ticks_per_quarter)
    probe.tempos = score.tempos
    track = symusic.Track("probe", 0, False)
    for tick in ticks.tolist():
        track.notes.append(symusic.Note(int(tick), 1, 60, 64))
    probe.tracks.append(track)
    return np.array([n.time for n in probe.to("second").tracks[0].notes], dtype=np.float64)


def bar_lines(score: symusic.Score) -> np.ndarray:
    """Ticks of every bar line up to the piece's end, following its time signatures (4/4 if none)."""
    end = max(score.end(), 1)
    changes = sorted((ts.time, ts.numerator, ts.denominator) for ts in score.time_signatures) or [(0, 4, 4)]
    if changes[0][0] > 0:
        changes.insert(0, (0, 4, 4))
    lines = []
    for i, (start, num, den) in enumerate(changes):
        stop = changes[i + 1][0] if i + 1 < len(changes) else end
        step = max(1, score.ticks_per_quarter * 4 * num // den)
        lines.extend(range(start, max(stop, start + 1), step))
    return np.array(sorted(set(lines)), dtype=np.int64)


def humanize(score: symusic.Score, seed: int, options: HumanizeOptions | None = None) -> symusic.Score:
    """The piece (all non-drum tracks merged into one piano) as a seeded performance recording."""
    o = options or HumanizeOptions()
    rng = np.random.default_rng(seed)
    piano = extract_piano(score, "all")
    notes = piano.tracks[0].notes.numpy() if piano.tracks else {}
    out = symusic.Score(RECORDING_TPQ)
    out.tempos.append(symusic.Tempo(0, NOMINAL_QPM))
    out.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    track = symusic.Track("piano", 0, False)
    out.tracks.append(track)
    if not len(notes.get("time", [])):
        return out
    onset = _seconds_of_ticks(piano, notes["time"])
    end = _seconds_of_ticks(piano, notes["time"] + notes["duration"])
    span = float(end.max()) + 2.0

    # rubato: the performed time is the integral of 1 / local speed
    grid = np.arange(0.0, span + 0.01, 0.01)
    drift = np.cumsum(rng.normal(0.0, 1.0, grid.size))
    drift = np.convolve(drift - drift.mean(), np.ones(301) / 301, mode="same")
    drift /= max(1e-9, np.abs(drift).max())
    speed = 1.0 + o.rubato * (0.7 * np.sin(2 * np.pi * grid / o.phrase_s + rng.uniform(0, 2 * np.pi)) + 0.3 * drift)
    performed = np.concatenate([[0.0], np.cumsum(0.01 / speed[:-1])])

    def warp(seconds: np.ndarray) -> np.ndarray:
        return np.interp(seconds, grid, performed)

    jitter = np.clip(rng.normal(0.0, o.jitter_ms, onset.size), -2.5 * o.jitter_ms, 2.5 * o.jitter_ms) / 1000.0
    start = np.maximum(0.0, warp(onset) + jitter)
    length = np.maximum(0.03, (warp(end) - warp(onset)) * rng.uniform(0.8, 1.0, onset.size))
    arc = np.sin(2 * np.pi * start / (1.5 * o.phrase_s) + rng.uniform(0, 2 * np.pi))
    velocity = np.clip(np.round(o.velocity_centre + o.velocity_swing * arc + rng.normal(0, o.velocity_noise, onset.size)), 1, 127)
    ticks_per_second = RECORDING_TPQ * NOMINAL_QPM / 60.0
    order = np.lexsort((notes["pitch"], start))
    for i in order.tolist():
        track.notes.append(symusic.Note(int(round(start[i] * ticks_per_second)), max(1, int(round(length[i] * ticks_per_second))),
                                        int(notes["pitch"][i]), int(velocity[i])))

    bars = warp(_seconds_of_ticks(piano, bar_lines(piano)))
    for a, b in zip(bars[:-1], bars[1:]):
        if rng.random() < o.pedal_share and b - a > 0.3:
            down = a + rng.uniform(0.03, 0.12)
            up = b - rng.uniform(0.01, 0.06)
            on, length = int(round(down * ticks_per_second)), max(1, int(round((up - down) * ticks_per_second)))
            track.pedals.append(symusic.Pedal(on, length))
            track.controls.append(symusic.ControlChange(on, 64, 127))  # what a file stores
            track.controls.append(symusic.ControlChange(on + length, 64, 0))
    return out

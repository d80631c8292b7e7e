"""Timed MIDI events, the note-on bookkeeping every player needs, and writing events to a .mid file.

An event's ``time`` is in seconds from the start of the performance (music time). The scheduler
turns it into a wall-clock target by adding one fixed origin, never by accumulating deltas.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

NOTE_OFF = 0x80
NOTE_ON = 0x90
CONTROL_CHANGE = 0xB0
PROGRAM_CHANGE = 0xC0
CC_SUSTAIN = 64
CC_ALL_SOUND_OFF = 120
CC_ALL_NOTES_OFF = 123


@dataclass(frozen=True, order=True)
class MidiEvent:
    """One channel message at an absolute music time (seconds)."""

    time: float
    # Sort note-offs before note-ons at equal times so a repeated pitch re-sounds instead of being cut.
    order: int
    data: tuple[int, ...]

    @property
    def status(self) -> int:
        return self.data[0] & 0xF0

    @property
    def channel(self) -> int:
        return self.data[0] & 0x0F

    @property
    def is_note_on(self) -> bool:
        return self.status == NOTE_ON and self.data[2] > 0

    @property
    def is_note_off(self) -> bool:
        return self.status == NOTE_OFF or (self.status == NOTE_ON and self.data[2] == 0)

    def shifted(self, seconds: float) -> "MidiEvent":
        return MidiEvent(self.time + seconds, self.order, self.data)


def note_on(time: float, pitch: int, velocity: int, channel: int = 0) -> MidiEvent:
    return MidiEvent(float(time), 2, (NOTE_ON | channel, int(pitch), max(1, min(127, int(velocity)))))


def note_off(time: float, pitch: int, channel: int = 0) -> MidiEvent:
    return MidiEvent(float(time), 0, (NOTE_OFF | channel, int(pitch), 0))


def control_change(time: float, control: int, value: int, channel: int = 0) -> MidiEvent:
    return MidiEvent(float(time), 1, (CONTROL_CHANGE | channel, int(control), max(0, min(127, int(value)))))


def program_change(time: float, program: int, channel: int = 0) -> MidiEvent:
    return MidiEvent(float(time), 1, (PROGRAM_CHANGE | channel, int(program)))


class NoteTracker:
    """Which notes sound right now (per channel and pitch) and since when.

    A pitch struck again before its release counts twice, so the synth gets one note-off per note-on.
    """

    def __init__(self) -> None:
        self._sounding: dict[tuple[int, int], list[float]] = {}
        self.sustain_down: set[int] = set()

    def observe(self, data: tuple[int, ...], now: float) -> None:
        status, channel = data[0] & 0xF0, data[0] & 0x0F
        if status == NOTE_ON and data[2] > 0:
            self._sounding.setdefault((channel, data[1]), []).append(now)
        elif status == NOTE_OFF or (status == NOTE_ON and data[2] == 0):
            onsets = self._sounding.get((channel, data[1]))
            if onsets:
                onsets.pop(0)
                if not onsets:
                    del self._sounding[(channel, data[1])]
        elif status == CONTROL_CHANGE and data[1] == CC_SUSTAIN:
            (self.sustain_down.add if data[2] >= 64 else self.sustain_down.discard)(channel)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self._sounding.values())

    def sounding(self) -> list[tuple[int, int]]:
        """(channel, pitch) of every sounding note, repeated once per unreleased strike."""
        return [key for key, onsets in self._sounding.items() for _ in onsets]

    def held_longer_than(self, limit: float, now: float) -> list[tuple[int, int]]:
        return [key for key, onsets in self._sounding.items() if onsets and now - onsets[0] >= limit]

    def earliest_onset(self) -> float | None:
        starts = [onsets[0] for onsets in self._sounding.values() if onsets]
        return min(starts) if starts else None

    def clear(self) -> None:
        self._sounding.clear()
        self.sustain_down.clear()


def panic_messages(tracker: NoteTracker, channels: Iterable[int] = range(16)) -> list[tuple[int, ...]]:
    """Note-offs for every sounding note, then sustain off and All Notes Off on every channel."""
    messages = [(NOTE_OFF | ch, pitch, 0) for ch, pitch in tracker.sounding()]
    for ch in channels:
        messages.append((CONTROL_CHANGE | ch, CC_SUSTAIN, 0))
        messages.append((CONTROL_CHANGE | ch, CC_ALL_NOTES_OFF, 0))
    return messages


def write_midi_file(events: Iterable[MidiEvent], path: str | Path, ticks_per_beat: int = 480, bpm: float = 120.0) -> Path:
    """Write events (absolute seconds) to a type-0 .mid at a fixed tempo, so seconds map exactly to ticks."""
    import mido  # noqa: PLC0415  (kept local: only file writers need it)

    path = Path(path)
    track = mido.MidiTrack()
    tempo = mido.bpm2tempo(bpm)
    track.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
    ticks_per_second = ticks_per_beat * 1_000_000 / tempo
    last_tick = 0
    for event in sorted(events, key=lambda e: (e.time, e.order)):  # stable: chords keep their played order
        tick = max(0, round(event.time * ticks_per_second))
        track.append(mido.Message.from_bytes(list(event.data), time=tick - last_tick))
        last_tick = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    midi = mido.MidiFile(type=0, ticks_per_beat=ticks_per_beat)
    midi.tracks.append(track)
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.save(str(path))
    return path

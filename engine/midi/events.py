"""Timed MIDI events, the note-on bookkeeping every player needs, and writing events to a .mid file.

An event's ``time`` is in seconds from the start of the performance (music time). The scheduler
turns it into a wall-clock target by adding one fixed origin, never by accumulating deltas.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
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


def take_until(events: Iterable[MidiEvent], time: float) -> list[MidiEvent]:
    """A take saved at ``time`` mid-performance: the events before it, then every note still
    sounding released and every held sustain pedal lifted at ``time``, so the file ends in silence."""
    kept = sorted((e for e in events if e.time < time), key=lambda e: (e.time, e.order))
    tracker = NoteTracker()
    for event in kept:
        tracker.observe(event.data, event.time)
    closing = [note_off(time, pitch, channel) for channel, pitch in tracker.sounding()]
    closing += [control_change(time, CC_SUSTAIN, 0, channel) for channel in sorted(tracker.sustain_down)]
    return kept + closing


def held_note_releases(played: Iterable[MidiEvent], cut: float, latest: float,
                       ends: dict[tuple[int, int], float] | None = None) -> list[MidiEvent]:
    """How a part that stops at ``cut`` (its events from there on dropped) ends, nothing left sounding.

    ``played``: the part's events, those at or after ``cut`` included; ``ends``: (channel, pitch) ->
    where the note sounding at ``cut`` was written to end, when the caller knows (else its next
    note-off in ``played``, which may be a re-strike that is now dropped). Each note sounding at
    ``cut`` ends there, but not before ``cut`` nor after ``latest`` (``latest == cut``: all at once).
    A sustain pedal down at ``cut`` comes up at the part's own pedal-up when that is among
    ``played`` and no later than ``latest``, else at ``cut``.
    """
    played = sorted(played, key=lambda e: (e.time, e.order))
    after = [e for e in played if e.time >= cut]
    tracker = NoteTracker()
    for event in (e for e in played if e.time < cut):
        tracker.observe(event.data, event.time)
    releases = []
    for channel, pitch in tracker.sounding():
        end = (ends or {}).get((channel, pitch))
        if end is None:
            end = next((e.time for e in after if e.is_note_off and e.data[1] == pitch and e.channel == channel), cut)
        releases.append(note_off(min(max(end, cut), latest), pitch, channel))
    for channel in sorted(tracker.sustain_down):
        lifted = next((e.time for e in after if e.channel == channel and e.status == CONTROL_CHANGE
                       and e.data[1] == CC_SUSTAIN and e.data[2] < 64), None)
        releases.append(control_change(lifted if lifted is not None and lifted <= latest else cut, CC_SUSTAIN, 0, channel))
    return sorted(releases, key=lambda e: (e.time, e.order))


@dataclass
class MeterMap:
    """Tempo changes and time signatures on the events' time axis (seconds), for a file.

    ``start`` (<= 0) is where the file begins on that axis: the bar line before the first event, so
    that bars in the file fall where the music's bars do. Before the first entry of each list the
    MIDI defaults hold (120 qpm, 4/4).
    """

    start: float = 0.0
    tempos: list[tuple[float, float]] = field(default_factory=lambda: [(0.0, 120.0)])  # (time, qpm)
    time_signatures: list[tuple[float, int, int]] = field(default_factory=list)  # (time, numerator, denominator)
    end: float | None = None  # where the piece ends if later than its last event (a bar line after silent bars)

    @staticmethod
    def _from_start(entries: list, start: float) -> list:
        """Entries in force from ``start`` on: the last one at or before it (moved to ``start``), then the later ones."""
        before = [e for e in entries if e[0] <= start + 1e-9]
        later = [e for e in entries if e[0] > start + 1e-9]
        return ([(start, *before[-1][1:])] if before else []) + later


def _tempo_us(qpm: float) -> int:
    return max(1, min(0xFFFFFF, round(60_000_000 / qpm)))


def write_midi_file(events: Iterable[MidiEvent], path: str | Path, ticks_per_beat: int = 480,
                    meter: MeterMap | None = None) -> Path:
    """Write events (absolute seconds) to a type-0 .mid with the tempo map and time signatures of
    ``meter`` (default: 120 qpm throughout), so that every event lands at its second and every bar
    line where the music puts it."""
    import mido  # kept local: only file writers need it

    path = Path(path)
    meter = meter or MeterMap()
    start = meter.start
    tempos = MeterMap._from_start(sorted(meter.tempos), start) or [(start, 120.0)]
    if tempos[0][0] > start:
        tempos.insert(0, (start, 120.0))
    # (seconds, tick, microseconds per quarter) at each tempo change; the file's own rounding of the
    # tempo to whole microseconds is used for the conversion, so reading the file back gives our seconds
    anchors: list[tuple[float, int, int]] = []
    for seconds, qpm in tempos:
        us = _tempo_us(qpm)
        if anchors:
            s0, k0, us0 = anchors[-1]
            tick = k0 + round((seconds - s0) * 1_000_000 / us0 * ticks_per_beat)
            if tick == k0:
                anchors.pop()  # two changes on one tick: the later one holds
                anchors.append((s0, k0, us))
                continue
            anchors.append((seconds, tick, us))
        else:
            anchors.append((seconds, 0, us))
    anchor_times = [a[0] for a in anchors]

    def to_tick(seconds: float) -> int:
        i = max(0, bisect.bisect_right(anchor_times, seconds + 1e-9) - 1)
        s0, k0, us = anchors[i]
        return max(0, k0 + round((seconds - s0) * 1_000_000 / us * ticks_per_beat))

    timed: list[tuple[int, int, int, object]] = []  # (tick, 0 meta / 1 event, order, message)
    for n, (_, tick, us) in enumerate(anchors):
        timed.append((tick, 0, n, mido.MetaMessage("set_tempo", tempo=us, time=0)))
    for n, (seconds, num, den) in enumerate(MeterMap._from_start(sorted(meter.time_signatures), start)):
        if den > 0 and den & (den - 1) == 0:  # MIDI writes denominators as powers of two
            timed.append((to_tick(seconds), 0, len(anchors) + n, mido.MetaMessage("time_signature", numerator=num, denominator=den, time=0)))
    for n, event in enumerate(sorted(events, key=lambda e: (e.time, e.order))):  # stable: chords keep their played order
        timed.append((to_tick(event.time), 1, n, mido.Message.from_bytes(list(event.data))))
    timed.sort(key=lambda item: item[:3])
    track = mido.MidiTrack()
    last_tick = 0
    for tick, _, _, message in timed:
        track.append(message.copy(time=tick - last_tick))
        last_tick = tick
    end_tick = max(last_tick, to_tick(meter.end) if meter.end is not None else 0)
    track.append(mido.MetaMessage("end_of_track", time=end_tick - last_tick))
    midi = mido.MidiFile(type=0, ticks_per_beat=ticks_per_beat)
    midi.tracks.append(track)
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.save(str(path))
    return path


def write_take(parts: dict[str, Iterable[MidiEvent]], path: str | Path, meter: MeterMap | None = None) -> Path:
    """One .mid with one named track per part (type 1), e.g. {"PianoMuse": model, "You": pianist};
    each part plays on its own channel. Timing is ``write_midi_file``'s (the same seconds and bars)."""
    import mido

    parts = {name: list(events) for name, events in parts.items()}
    owner = {e.channel: name for name, events in parts.items() for e in events}
    path = write_midi_file([e for events in parts.values() for e in events], path, meter=meter)
    single = mido.MidiFile(str(path))
    tracks: dict[str, list[tuple[int, object]]] = {"": []}
    tracks.update({name: [] for name in parts})
    tick = 0
    for message in single.tracks[0]:
        tick += message.time
        if message.type == "end_of_track":
            continue
        name = owner.get(getattr(message, "channel", -1), "") if not message.is_meta else ""
        tracks[name].append((tick, message))
    midi = mido.MidiFile(type=1, ticks_per_beat=single.ticks_per_beat)
    for name, timed in tracks.items():
        track = mido.MidiTrack()
        if name:
            track.append(mido.MetaMessage("track_name", name=name, time=0))
        last = 0
        for at, message in timed:
            track.append(message.copy(time=at - last))
            last = at
        track.append(mido.MetaMessage("end_of_track", time=max(0, tick - last)))
        midi.tracks.append(track)
    midi.save(str(path))
    return path

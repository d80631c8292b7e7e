"""StreamDecoder: token ids -> timed MIDI events (absolute seconds), incrementally, as they are generated.

A note-on goes out when its note is complete (Pitch, Velocity, Duration), or with ``strike_early``
as soon as its Velocity is known (a live duet's first note leaves one token sooner; the events and
their order are the same, only the Duration's feed returns the note's bookkeeping alone, and the
grammar always draws a Duration next). Its note-off goes out
once generation has moved past the note's end, so its time uses every tempo change up to there
(future tempo tokens can only come later in time). Overlapping notes of one pitch follow
``same_pitch_rule`` (a unison doubling is one note, a re-strike releases the sounding note first),
so the synth and the file see one note-off per note-on. Sustain pedal becomes CC64. ``meter``
gives the tempo map and time signatures the tokens set, on the events' time axis, for the file.
"""
from __future__ import annotations

import heapq
import itertools

from engine.midi.events import CC_SUSTAIN, MeterMap, MidiEvent, control_change, note_off, note_on

from .timeline import MERGE, RESTRIKE, Note, TokenTables, TokenTimeline, same_pitch_rule, strike_action


class StreamDecoder:
    """Feed ids one at a time; each ``feed`` returns the MidiEvents that became certain.

    Times start at 0 at the first event played (``start_at_first_event``), so a continuation
    after a prompt does not begin with the prompt's length of silence.
    """

    def __init__(self, tables, channel: int = 0, start_at_first_event: bool = True) -> None:
        tables = TokenTables.of(tables)  # a PianoTokenizer will do
        self.tables = tables
        self.timeline = TokenTimeline(tables)
        self.channel = channel
        self.start_at_first_event = start_at_first_event
        self.origin: float | None = None if start_at_first_event else 0.0
        self.bar_origin: float | None = None if start_at_first_event else 0.0  # seconds of the first event's bar line
        self.notes: list[Note] = []  # every completed note (ticks), as the tokens say
        self.events: list[MidiEvent] = []  # everything emitted, in seconds
        self._pending_offs: list[tuple[int, int, int]] = []  # (end tick, seq, pitch)
        self._seq = itertools.count()
        self.end_tick: int | None = None  # where the piece ends when that is a bar line, not its last note
        self._sounding: dict[int, tuple[int, int]] = {}  # pitch -> (onset, end) ticks of its sounding note
        self.strike_early = False  # True: a note-on goes out once its Velocity is drawn, before its Duration

    def copy(self) -> "StreamDecoder":
        twin = StreamDecoder.__new__(StreamDecoder)
        twin.__dict__.update(self.__dict__)
        twin.timeline = self.timeline.copy()
        twin.notes = list(self.notes)
        twin.events = list(self.events)
        twin._pending_offs = list(self._pending_offs)
        twin._sounding = dict(self._sounding)
        twin._seq = itertools.count(next(self._seq))
        return twin

    def prime(self, ids) -> None:
        """Run prompt tokens through the timeline only (bars, tempo, time signature), emitting nothing."""
        self.timeline.feed_all(ids)

    def _time(self, tick: int) -> float:
        seconds = self.timeline.seconds(tick)
        if self.origin is None:
            self.origin = seconds
            self.bar_origin = self.timeline.seconds(self.timeline.bar_start_tick)
        return max(0.0, seconds - self.origin)

    def _emit(self, events: list[MidiEvent], event: MidiEvent) -> None:
        events.append(event)
        self.events.append(event)

    def _flush_offs(self, up_to_tick: int, events: list[MidiEvent]) -> None:
        while self._pending_offs and self._pending_offs[0][0] <= up_to_tick:
            end, _, pitch = heapq.heappop(self._pending_offs)
            if pitch in self._sounding and self._sounding[pitch][1] == end:
                del self._sounding[pitch]
                self._emit(events, note_off(self._time(end), pitch, self.channel))

    def feed(self, token_id: int) -> list[MidiEvent]:
        events: list[MidiEvent] = []
        for item in self.timeline.feed(int(token_id)):
            if item[0] == "strike" and self.strike_early:
                _, onset, pitch, velocity = item
                self._strike(onset, pitch, velocity, strike_action(self._sounding.get(pitch), onset), events)
            elif item[0] == "note":
                note: Note = item[1]
                self.notes.append(note)
                self._flush_offs(note.onset, events)
                sounding = self._sounding.get(note.pitch)
                action, end = same_pitch_rule(sounding, note)
                if not self.strike_early:  # else struck at its Velocity (nothing has changed since)
                    self._strike(note.onset, note.pitch, note.velocity, action, events)
                self._sounding[note.pitch] = (sounding[0] if action == MERGE else note.onset, end)
                heapq.heappush(self._pending_offs, (end, next(self._seq), note.pitch))
            elif item[0] == "pedal":
                self._flush_offs(item[1], events)
                self._emit(events, control_change(self._time(item[1]), CC_SUSTAIN, 127 if item[2] else 0, self.channel))
        self._flush_offs(self.timeline.tick, events)
        return events

    def _strike(self, onset: int, pitch: int, velocity: int, action: str, events: list[MidiEvent]) -> None:
        """The key goes down at ``onset`` as ``same_pitch_rule`` says (a re-strike releases it first)."""
        self._flush_offs(onset, events)
        if action == RESTRIKE:
            self._emit(events, note_off(self._time(onset), pitch, self.channel))
        if action != MERGE:
            self._emit(events, note_on(self._time(onset), pitch, velocity, self.channel))

    @property
    def horizon(self) -> float:
        """Seconds of music decided so far (the generation front), on the events' time axis."""
        if self.origin is None:
            return 0.0
        return max(0.0, self.timeline.seconds(self.timeline.tick) - self.origin)

    def meter(self) -> MeterMap:
        """The tempo changes and time signatures so far on the events' time axis, starting the file
        at the bar line of the first event (so a bar-based reading of the file lines up)."""
        timeline = self.timeline
        origin = self.origin if self.origin is not None else 0.0
        bar_origin = self.bar_origin if self.bar_origin is not None else origin
        return MeterMap(
            start=min(0.0, bar_origin - origin),
            tempos=[(seconds - origin, qpm) for _, qpm, seconds in timeline.tempos],
            time_signatures=[(timeline.seconds(tick) - origin, num, den) for tick, num, den in timeline.time_signatures],
            end=None if self.end_tick is None else timeline.seconds(self.end_tick) - origin,
        )

    def finish(self) -> list[MidiEvent]:
        """Release every note at its end and lift the pedal: the stream ends with nothing sounding."""
        events: list[MidiEvent] = []
        last = self.timeline.tick
        if self._pending_offs:
            last = max(last, max(end for end, _, _ in self._pending_offs))
        self._flush_offs(last, events)
        self.timeline.tick = last  # the piece ends when its last note does
        if self.timeline.pedal_down_at is not None:
            self.timeline.pedal_down_at = None
            self._emit(events, control_change(self._time(last), CC_SUSTAIN, 0, self.channel))
        return events

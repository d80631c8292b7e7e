"""What a token stream means in time, one token at a time: the single source of truth for the grammar
mask, the streaming decoder and the bar counter.

``TokenTimeline`` follows MidiTok 3.1's own REMI and TSD decoding rule for rule (bars, positions,
rests measured from the last note end, time-signature changes, tempo, sustain pedal), so what
streams out equals ``PianoTokenizer.decode`` of the same ids (a test holds them equal).
"""
from __future__ import annotations

import bisect
import copy
from dataclasses import dataclass

import numpy as np

SUPPORTED_TOKENIZATIONS = ("REMI", "TSD")
DEFAULT_QPM = 120.0  # what symusic and MIDI assume before the first tempo


class GenerationError(ValueError):
    """A generation request that cannot run; the message is one sentence saying what to do."""


class TokenTables:
    """Per-id facts of one tokenizer, computed once and shared by every row of a session."""

    def __init__(self, tokenizer) -> None:
        if tokenizer.tokenization not in SUPPORTED_TOKENIZATIONS:
            raise GenerationError(
                f"live generation supports REMI and TSD tokenizers, but this checkpoint uses {tokenizer.tokenization}; retrain with tokenization REMI or TSD"
            )
        from miditok.utils import compute_ticks_per_bar

        m = tokenizer.miditok
        self.tokenizer = tokenizer
        self.tokenization = tokenizer.tokenization
        self.vocab_size = tokenizer.vocab_size
        self.tpq = int(tokenizer.time_division)
        self.kinds = tuple(tokenizer.kinds)
        self.kind_index = {k: i for i, k in enumerate(self.kinds)}
        self.kind_of_id = np.asarray(tokenizer.kind_of_id, dtype=np.int64)
        self.kind = [tokenizer.token_kind(i) for i in range(self.vocab_size)]
        self.value = [tokenizer.token_value(i) for i in range(self.vocab_size)]
        self.tpb_per_ts = dict(m._tpb_per_ts)
        self.duration_ticks = m._tpb_tokens_to_ticks
        self.rest_ticks = getattr(m, "_tpb_rests_to_ticks", {})
        self._compute_ticks_per_bar = compute_ticks_per_bar
        self._parse_ts = m._parse_token_time_signature
        self._ticks_per_pos = getattr(m, "_compute_ticks_per_pos", None)
        self.pitch_range = tuple(m.config.pitch_range)
        self.bos_id, self.eos_id, self.pad_id = tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id
        self.start_qpm = getattr(tokenizer, "fixed_tempo", None) or DEFAULT_QPM  # the tempo before any Tempo token
        self.position_value = np.full(self.vocab_size, -1, dtype=np.int64)
        for i in tokenizer.kind_ids("Position"):
            self.position_value[i] = int(self.value[i])

    def ticks_per_bar(self, num: int, den: int) -> int:
        from symusic import TimeSignature

        return int(self._compute_ticks_per_bar(TimeSignature(0, num, den), self.tpq))

    def ticks_per_pos(self, ticks_per_beat: int) -> int:
        return int(self._ticks_per_pos(ticks_per_beat)) if self._ticks_per_pos else 1

    def time_signature(self, token_id: int) -> tuple[int, int]:
        return tuple(self._parse_ts(self.value[token_id]))

    @classmethod
    def of(cls, tables_or_tokenizer) -> "TokenTables":
        """A TokenTables as it is, or the tables of a PianoTokenizer (built here)."""
        return tables_or_tokenizer if isinstance(tables_or_tokenizer, cls) else cls(tables_or_tokenizer)


@dataclass
class Note:
    onset: int  # ticks
    duration: int
    pitch: int
    velocity: int


# What a note does to a note of the same pitch that still sounds at its onset (see ``same_pitch_rule``).
STRIKE, MERGE, RESTRIKE = "strike", "merge", "restrike"


def same_pitch_rule(sounding: tuple[int, int] | None, note: Note) -> tuple[str, int]:
    """The one rule for overlapping same-pitch notes, in files and live: a key sounds once at a time.

    ``sounding`` is the (onset, end) in ticks of the note of ``note.pitch`` sounding now, or None.
    Returns (action, end tick of the pitch's sounding note afterwards):
    - STRIKE: nothing of that pitch sounds at the onset: a new note to its own end;
    - MERGE: a unison doubling (the sounding note began on the same tick): one note, which lasts
      to the later of the two ends and keeps the first note's velocity;
    - RESTRIKE: the sounding note began earlier: it is released at this onset and the key struck
      again, to the new note's end.
    """
    end = note.onset + max(1, note.duration)
    action = strike_action(sounding, note.onset)
    return action, max(sounding[1], end) if action == MERGE else end


def strike_action(sounding: tuple[int, int] | None, onset: int) -> str:
    """``same_pitch_rule``'s action for a note struck at ``onset``: it does not depend on the new
    note's duration, so a live player can strike the key before the Duration token is drawn."""
    if sounding is None or sounding[1] <= onset:
        return STRIKE
    return MERGE if sounding[0] == onset else RESTRIKE


def sounding_notes(notes) -> list[Note]:
    """The notes as a piano (and every file PianoMuse writes) sounds them under ``same_pitch_rule``.

    ``notes`` in the order they were generated (onsets never go back).
    """
    out: list[Note] = []
    playing: dict[int, int] = {}  # pitch -> index in out of its last note
    for note in notes:
        i = playing.get(note.pitch)
        sounding = (out[i].onset, out[i].onset + out[i].duration) if i is not None else None
        action, end = same_pitch_rule(sounding, note)
        if action == MERGE:
            out[i] = Note(out[i].onset, end - out[i].onset, note.pitch, out[i].velocity)
            continue
        if action == RESTRIKE:
            out[i] = Note(out[i].onset, note.onset - out[i].onset, note.pitch, out[i].velocity)
        playing[note.pitch] = len(out)
        out.append(Note(note.onset, end - note.onset, note.pitch, note.velocity))
    return out


class TokenTimeline:
    """Time state after each token of one sequence; ``feed`` returns what the token completed.

    Returned items: ``("strike", tick, pitch, velocity)`` once a note's Velocity is known (its
    Duration token follows), ``("note", Note)`` once it is complete, ``("pedal", tick, down)``,
    ``("tempo", tick, qpm)``.
    """

    def __init__(self, tables: TokenTables) -> None:
        self.t = tables
        self.tick = 0
        self.bar_tick = 0  # tick of the current bar's start (REMI)
        self.bar = -1 if tables.tokenization == "REMI" else 0
        self.ts = (4, 4)
        self.ts_tick, self.ts_bar = 0, 0
        self.ticks_per_bar = tables.ticks_per_bar(4, 4)
        self.ticks_per_beat = tables.tpb_per_ts[4]
        self.ticks_per_pos = tables.ticks_per_pos(self.ticks_per_beat)
        self.previous_note_end = 0
        self.pedal_down_at: int | None = None
        self.last_kind: str | None = None  # None: nothing yet (the grammar's BOS row)
        self.note_stage = 0  # 0: no note open, 1: after Pitch, 2: after Velocity
        self._pitch = self._velocity = 0
        self.ended = False
        self.tempos: list[tuple[int, float, float]] = [(0, tables.start_qpm, 0.0)]  # (tick, qpm, seconds at tick)
        self.time_signatures: list[tuple[int, int, int]] = [(0, 4, 4)]  # (tick, numerator, denominator)
        self.position_tick: int | None = None  # the tick the last Position token set (REMI)
        self.notes_at_tick = 0  # notes struck at the current tick (the size of the chord so far)
        self.tokens_seen = 0

    def copy(self) -> "TokenTimeline":
        twin = copy.copy(self)
        twin.tempos = list(self.tempos)
        twin.time_signatures = list(self.time_signatures)
        return twin

    # ----- time -----
    def seconds(self, tick: int) -> float:
        i = bisect.bisect_right(self.tempos, (tick, float("inf"), float("inf"))) - 1
        t0, qpm, s0 = self.tempos[max(i, 0)]
        return s0 + (tick - t0) * 60.0 / (qpm * self.t.tpq)

    @property
    def bar_index(self) -> int:
        """The bar the current tick lies in (REMI: bars opened by Bar tokens; -1 before the first)."""
        if self.t.tokenization == "REMI":
            return self.bar
        return self.ts_bar + (self.tick - self.ts_tick) // self.ticks_per_bar

    @property
    def bar_start_tick(self) -> int:
        """The tick where the current bar began (0 before the first bar)."""
        if self.t.tokenization == "REMI":
            return max(self.bar_tick, 0)
        return self.ts_tick + (self.tick - self.ts_tick) // self.ticks_per_bar * self.ticks_per_bar

    def bar_after(self, token_id: int) -> int:
        """The bar index this token would lead to (without consuming it)."""
        if self.t.kind[token_id] not in ("Bar", "Rest", "TimeShift"):
            return self.bar_index
        twin = self.copy()
        twin.feed(token_id)
        return twin.bar_index

    def _set_time_signature(self, num: int, den: int) -> None:
        self.ts = (num, den)
        self.ticks_per_bar = self.t.ticks_per_bar(num, den)
        self.ticks_per_beat = self.t.tpb_per_ts[den]
        self.ticks_per_pos = self.t.ticks_per_pos(self.ticks_per_beat)

    # ----- one token -----
    def feed(self, token_id: int) -> list[tuple]:
        t = self.t
        kind, value = t.kind[token_id], t.value[token_id]
        out: list[tuple] = []
        self.tokens_seen += 1
        stage, self.note_stage = self.note_stage, 0
        if kind in ("PAD", "BOS"):
            return out
        tick_before = self.tick
        self.last_kind = kind
        if kind == "EOS":
            self.ended = True
        elif kind == "Bar":
            self.bar += 1
            if self.bar > 0:
                self.tick = self.bar_tick + self.ticks_per_bar
            self.bar_tick = self.tick
        elif kind == "Position":
            if self.bar == -1:
                self.bar = 0
            self.tick = self.bar_tick + int(value) * self.ticks_per_pos
            self.position_tick = self.tick
        elif kind == "TimeShift":
            self.tick += t.duration_ticks[self.ticks_per_beat][value]
        elif kind == "Rest":
            self.tick = max(self.previous_note_end, self.tick) + t.rest_ticks[self.ticks_per_beat][value]
            if t.tokenization == "REMI":
                real_bar = self.ts_bar + (self.tick - self.ts_tick) // self.ticks_per_bar
                if real_bar > self.bar:
                    if self.bar == -1:
                        self.bar = 0
                    self.bar_tick += (real_bar - self.bar) * self.ticks_per_bar
                    self.bar = real_bar
        elif kind == "Pitch":
            pitch = int(value)
            if t.pitch_range[0] <= pitch <= t.pitch_range[1]:
                self._pitch, self.note_stage = pitch, 1
        elif kind == "Velocity":
            if stage == 1:
                self._velocity, self.note_stage = int(value), 2
                out.append(("strike", self.tick, self._pitch, self._velocity))
        elif kind == "Duration":
            if stage == 2:
                duration = t.duration_ticks[self.ticks_per_beat][value]
                out.append(("note", Note(self.tick, duration, self._pitch, self._velocity)))
                self.previous_note_end = max(self.previous_note_end, self.tick + duration)
                self.notes_at_tick += 1
        elif kind == "Tempo":
            qpm = float(value)
            if self.tempos[-1][0] == self.tick:
                self.tempos[-1] = (self.tick, qpm, self.tempos[-1][2])
            else:
                self.tempos.append((self.tick, qpm, self.seconds(self.tick)))
            out.append(("tempo", self.tick, qpm))
            if t.tokenization == "REMI":
                self.previous_note_end = max(self.previous_note_end, self.tick)
        elif kind == "TimeSig":
            num, den = t.time_signature(token_id)
            if (num, den) != self.ts:
                if t.tokenization == "REMI":
                    self.ts_tick, self.ts_bar = self.bar_tick, self.bar
                else:
                    self.ts_bar, self.ts_tick = self.bar_index, self.tick
                self._set_time_signature(num, den)
                if self.time_signatures[-1][0] >= self.ts_tick:  # a second change at one bar line replaces the first
                    self.time_signatures.pop()
                self.time_signatures.append((self.ts_tick, num, den))
        elif kind == "Pedal":
            if self.pedal_down_at is None:
                self.pedal_down_at = self.tick
                out.append(("pedal", self.tick, True))
        elif kind == "PedalOff":
            if self.pedal_down_at is not None:
                self.pedal_down_at = None
                out.append(("pedal", self.tick, False))
        if self.tick != tick_before:
            self.notes_at_tick = 0
        return out

    def feed_all(self, ids) -> list[tuple]:
        out = []
        for i in ids:
            out += self.feed(int(i))
        return out

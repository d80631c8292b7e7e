"""Tokenizing a pianist on the fly: played notes -> the model's own tokens, on the model's time grid.

``LiveEncoder`` turns a note (onset and release in music seconds, pitch, velocity) or a pedal
change into the token ids the checkpoint's tokenizer would write for it, placed after what the
sequence already holds. It reads the row's ``TokenTimeline`` (where the sequence is in ticks, the
tempo in force, the bar) and works on a copy, so the ids it returns are exactly what the timeline
accepts next: REMI gets Bar and Position tokens, TSD TimeShift tokens, then Pitch, Velocity and
Duration (values rounded to the tokenizer's nearest). Onsets are rounded to the grid and never
placed before the sequence's current time (a live stream cannot write into the past).
"""
from __future__ import annotations

import math

from .timeline import TokenTables, TokenTimeline


class LiveEncoder:
    def __init__(self, tables) -> None:
        t = TokenTables.of(tables)
        self.t = t
        tok = t.tokenizer
        self.bar_id = _first(tok.kind_ids("Bar"))
        self.position_ids = {int(t.value[i]): i for i in tok.kind_ids("Position")}
        self.pitch_ids = {int(t.value[i]): i for i in tok.kind_ids("Pitch")}
        self.velocity_ids = sorted((int(t.value[i]), i) for i in tok.kind_ids("Velocity"))
        self.duration_ids = list(tok.kind_ids("Duration"))
        self.shift_ids = list(tok.kind_ids("TimeShift"))
        self.pedal_id = _first(tok.kind_ids("Pedal"))
        self.pedal_off_id = _first(tok.kind_ids("PedalOff"))
        self.tempo_ids = sorted((float(t.value[i]), i) for i in tok.kind_ids("Tempo"))
        self.timesig_ids = {t.time_signature(i): i for i in tok.kind_ids("TimeSig")}

    # ---- time ------------------------------------------------------------------------------------

    def tick_at(self, timeline: TokenTimeline, seconds: float, up: bool = False) -> int:
        """The tick at music time ``seconds`` under the tempo in force at the timeline's end: the
        nearest, or with ``up`` the first at or after it (an earliest time is never rounded earlier)."""
        tick0, qpm, s0 = timeline.tempos[-1]
        ticks = (seconds - s0) * qpm * self.t.tpq / 60.0
        return tick0 + (math.ceil(ticks - 1e-6) if up else round(ticks))

    def grid(self, timeline: TokenTimeline) -> int:
        """The smallest step the tokens can place an onset on, in ticks."""
        if self.t.tokenization == "REMI":
            return max(1, timeline.ticks_per_pos)
        steps = [self.t.duration_ticks[timeline.ticks_per_beat][self.t.value[i]] for i in self.shift_ids]
        return max(1, min(steps)) if steps else 1

    def snap(self, timeline: TokenTimeline, tick: int, up: bool = False) -> int:
        g = self.grid(timeline)
        return (math.ceil(tick / g) if up else round(tick / g)) * g

    # ---- tokens ------------------------------------------------------------------------------------

    def header(self, qpm: float, time_signature: tuple[int, int] = (4, 4)) -> list[int]:
        """What a piece opens with (REMI: Bar, TimeSig, Position 0, Tempo; TSD: TimeSig, Tempo), so
        the model hears the session's metre and speed before the first note."""
        out = []
        if self.t.tokenization == "REMI" and self.bar_id is not None:
            out.append(self.bar_id)
        if time_signature in self.timesig_ids:
            out.append(self.timesig_ids[time_signature])
        if self.t.tokenization == "REMI" and 0 in self.position_ids:
            out.append(self.position_ids[0])
        if self.tempo_ids:
            out.append(min(self.tempo_ids, key=lambda v: abs(v[0] - qpm))[1])
        return out

    def advance(self, timeline: TokenTimeline, tick: int) -> list[int]:
        """Tokens that move the sequence to ``tick`` (on the grid, not before its current time)."""
        sim = timeline.copy()
        return self._advance(sim, tick)

    def _advance(self, sim: TokenTimeline, tick: int) -> list[int]:
        out: list[int] = []

        def feed(token: int) -> None:
            sim.feed(token)
            out.append(token)

        tick = max(tick, sim.tick)
        if self.t.tokenization == "REMI":
            if sim.bar < 0:
                feed(self.bar_id)
            while tick >= sim.bar_tick + sim.ticks_per_bar:
                feed(self.bar_id)
            pos = (tick - sim.bar_tick) // max(1, sim.ticks_per_pos)
            at = sim.bar_tick + pos * sim.ticks_per_pos
            if not (sim.position_tick == at and sim.tick == at) and pos in self.position_ids:
                feed(self.position_ids[pos])
            return out
        remaining = tick - sim.tick
        shifts = sorted(((self.t.duration_ticks[sim.ticks_per_beat][self.t.value[i]], i) for i in self.shift_ids), reverse=True)
        while remaining > 0 and shifts:
            step, token = next(((s, i) for s, i in shifts if s <= remaining), shifts[-1])
            feed(token)
            remaining = tick - sim.tick
        return out

    def bar_lines(self, timeline: TokenTimeline, seconds: float) -> list[int]:
        """REMI: a Bar token for each bar line the sequence has not opened yet that falls at or before
        ``seconds`` (music seconds), so a silence is in the state as it passes; [] otherwise (TSD
        writes a silence as the time shift before the next note)."""
        if self.t.tokenization != "REMI" or self.bar_id is None or timeline.bar < 0:
            return []
        sim, out = timeline.copy(), []
        while sim.seconds(sim.bar_tick + sim.ticks_per_bar) <= seconds:
            sim.feed(self.bar_id)
            out.append(self.bar_id)
        return out

    def note(self, timeline: TokenTimeline, onset: float, release: float, pitch: int, velocity: int) -> list[int]:
        """Tokens of one played note (music seconds); [] for a pitch outside the tokenizer's range."""
        if pitch not in self.pitch_ids:
            return []
        sim = timeline.copy()
        start = self.snap(sim, self.tick_at(sim, onset))
        out = self._advance(sim, start)
        length = max(1, self.tick_at(sim, release) - self.tick_at(sim, onset))
        duration = min(self.duration_ids, key=lambda i: abs(self.t.duration_ticks[sim.ticks_per_beat][self.t.value[i]] - length))
        velocity_id = min(self.velocity_ids, key=lambda v: abs(v[0] - velocity))[1]
        return out + [self.pitch_ids[pitch], velocity_id, duration]

    def pedal(self, timeline: TokenTimeline, at: float, down: bool) -> list[int]:
        """Tokens of a sustain-pedal change, or [] when the tokenizer has no pedal or nothing changes."""
        token = self.pedal_id if down else self.pedal_off_id
        if token is None or (timeline.pedal_down_at is not None) == down:
            return []
        sim = timeline.copy()
        out = self._advance(sim, self.snap(sim, self.tick_at(sim, at)))
        return out + [token]


def _first(ids) -> int | None:
    ids = list(ids)
    return ids[0] if ids else None

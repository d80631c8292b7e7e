"""GrammarMask: which ids may come next for a row, so every generated sequence decodes and plays.

The tokenizer's kind grammar (``grammar_matrix``) says which kinds may follow which. On top of it,
from the row's TokenTimeline:
- a note is Pitch, Velocity, Duration with nothing in between and no end before its Duration;
- REMI positions never go back in time, never repeat the one just set, and stay inside the bar
  of the current time signature (a live stream cannot play into the past);
- at most MAX_CHORD notes start at one instant (so time always moves on and a session ends);
- the pedal is pressed only when up and lifted only when down (no events that change nothing);
- close to a token budget no new note starts, so the budget never cuts a note in half.
"""
from __future__ import annotations

import torch

from .timeline import TokenTables, TokenTimeline

NOTE_TOKENS = 3  # Pitch, Velocity, Duration
MAX_CHORD = 16  # ten fingers and the odd cluster; beyond this a model is stuck, not playing


class GrammarMask:
    def __init__(self, tables) -> None:
        """``tables``: a TokenTables, or a PianoTokenizer (its tables are built here)."""
        tables = TokenTables.of(tables)
        self.tables = tables
        tok = tables.tokenizer
        kinds = tables.kinds
        matrix = torch.as_tensor(tok.grammar_matrix, dtype=torch.bool)
        self.kind_of_id = torch.as_tensor(tables.kind_of_id)

        def ids_of(kind: str) -> torch.Tensor:
            mask = torch.zeros(tables.vocab_size, dtype=torch.bool)
            if kind in kinds:
                mask[self.kind_of_id == kinds.index(kind)] = True
            return mask

        self.eos = torch.zeros(tables.vocab_size, dtype=torch.bool)
        self.eos[tables.eos_id] = True
        self.velocity, self.duration = ids_of("Velocity"), ids_of("Duration")
        self.pitch, self.position = ids_of("Pitch"), ids_of("Position")
        self.pedal, self.pedal_off = ids_of("Pedal"), ids_of("PedalOff")
        self.position_value = torch.as_tensor(tables.position_value)
        never = torch.zeros(tables.vocab_size, dtype=torch.bool)
        never[[tables.pad_id, tables.bos_id]] = True
        # Velocity and Duration are only reachable through a Pitch (note_stage 1 and 2), so they are
        # dropped from every kind's row here once, not on every token.
        never |= self.velocity | self.duration
        self.after_kind = {kind: matrix[i] & ~never for i, kind in enumerate(kinds)}
        self.start = self.after_kind["BOS"]
        # the complements ``allowed`` ands with, built once: it runs for every row on every token
        self._not_pitch, self._not_eos = ~self.pitch, ~self.eos
        self._not_pedal, self._not_pedal_off = ~self.pedal, ~self.pedal_off
        self._position_cache: dict[tuple[int, int, int], torch.Tensor] = {}

    def _position_filter(self, timeline: TokenTimeline) -> torch.Tensor:
        """Every id but the Position ids before the current tick or past the bar's end."""
        earliest = max(0, timeline.tick - timeline.bar_tick)
        if timeline.position_tick == timeline.tick:
            earliest += 1  # this instant already has its Position token
        key = (earliest, timeline.ticks_per_pos, timeline.ticks_per_bar)
        keep = self._position_cache.get(key)
        if keep is None:
            ticks = self.position_value * timeline.ticks_per_pos
            keep = ~self.position | ((ticks >= earliest) & (ticks < timeline.ticks_per_bar))
            self._position_cache[key] = keep
        return keep

    def allowed(self, timeline: TokenTimeline, remaining: int | None = None, allow_eos: bool = True) -> torch.Tensor:
        """bool [vocab] of ids that may follow; never empty."""
        if timeline.note_stage == 1:
            return self.velocity.clone()
        if timeline.note_stage == 2:
            return self.duration.clone()
        mask = (self.start if timeline.last_kind is None else self.after_kind[timeline.last_kind]).clone()
        if self.tables.tokenization == "REMI":
            mask &= self._position_filter(timeline)
        mask &= self._not_pedal if timeline.pedal_down_at is not None else self._not_pedal_off
        if (remaining is not None and remaining < NOTE_TOKENS) or timeline.notes_at_tick >= MAX_CHORD:
            mask &= self._not_pitch
        if not allow_eos:
            mask &= self._not_eos
        if not bool(mask.any()):
            mask = self.eos.clone()  # a dead end (should not happen): end the piece cleanly
        return mask

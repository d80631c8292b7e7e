"""Augmentation of training samples, done on token ids inside the training loop.

Why on tokens and not on MIDI: a transposition is a table look-up on the ids of the pitch tokens
(Pitch, NoteOn, NoteOff), so it costs one vectorised gather per sample and needs no re-tokenizing,
and the store keeps one copy of each piece. A shift is rejected, and another one drawn, when any
pitch of the sample would leave the piano range (21..108, which is exactly the tokenizer's pitch
range, so "no token for the shifted pitch" and "off the keyboard" are the same test). Velocity and
tempo jitter move Velocity/Tempo tokens by whole bins, clipped at the ends of the bin range, which
keeps every jittered id a valid token of the same kind.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tokenizer import PIANO_HIGH, PIANO_LOW
from .windows import with_tokens


@dataclass
class AugmentConfig:
    transpose_range: int = 6  # semitones either way
    velocity_jitter: int = 0  # velocity bins either way (one shift per sample)
    tempo_jitter: float = 0.0  # relative tempo change either way, e.g. 0.05 = +-5 %, as whole tempo bins


class Augmenter:
    """``augmenter(sample, rng) -> sample``: random transposition and optional jitter.

    ``sample`` is an int array of token ids or any dataclass with a ``tokens`` array (completion
    windows keep their ``ctx_len``: the augmentations never change a sample's length).
    """

    def __init__(self, tokenizer, config: AugmentConfig | None = None, **overrides):
        self.config = config or AugmentConfig(**overrides)
        if self.config.transpose_range < 0 or self.config.velocity_jitter < 0 or self.config.tempo_jitter < 0:
            raise ValueError("augmentation ranges must be >= 0")
        self.pitch_of_id = tokenizer.pitch_of_id
        self.vocab_size = tokenizer.vocab_size
        self._tables: dict[int, np.ndarray] = {}
        for k in range(-self.config.transpose_range, self.config.transpose_range + 1):
            table = tokenizer.transpose_table(k)
            self._tables[k] = table
        self._velocity = self._rank_table(tokenizer.value_order.get("Velocity", []))
        tempo_ids = tokenizer.value_order.get("Tempo", [])
        self._tempo = self._rank_table(tempo_ids)
        self._tempo_values = np.array([float(tokenizer.token_value(i)) for i in tempo_ids]) if tempo_ids else np.zeros(0)
        self._velocity_ids = np.asarray(tokenizer.value_order.get("Velocity", []), dtype=np.int64)
        self._tempo_ids = np.asarray(tempo_ids, dtype=np.int64)

    def _rank_table(self, ordered_ids: list[int]) -> np.ndarray:
        """int [vocab]: rank of an id among its kind's values, -1 for other ids."""
        rank = np.full(self.vocab_size, -1, dtype=np.int64)
        rank[np.asarray(ordered_ids, dtype=np.int64)] = np.arange(len(ordered_ids))
        return rank

    def allowed_shifts(self, tokens: np.ndarray) -> list[int]:
        """Semitone shifts in range that keep every pitch of ``tokens`` on the keyboard."""
        pitches = self.pitch_of_id[tokens]
        pitches = pitches[pitches >= 0]
        if len(pitches) == 0:
            return [0]
        low, high = int(pitches.min()), int(pitches.max())
        r = self.config.transpose_range
        return [k for k in range(-r, r + 1) if low + k >= PIANO_LOW and high + k <= PIANO_HIGH]

    def transpose(self, tokens: np.ndarray, semitones: int) -> np.ndarray:
        """``tokens`` shifted by ``semitones``; ValueError when a note would leave the piano range."""
        table = self._tables.get(semitones)
        if table is None:
            raise ValueError(f"a shift of {semitones} is outside the configured range +-{self.config.transpose_range}")
        out = table[tokens]
        if (out < 0).any():
            raise ValueError(f"a shift of {semitones} semitones moves notes off the piano range {PIANO_LOW}-{PIANO_HIGH}")
        return out.astype(tokens.dtype, copy=False)

    def _shift_bins(self, tokens: np.ndarray, rank: np.ndarray, ids: np.ndarray, shift: int) -> np.ndarray:
        where = rank[tokens] >= 0
        if shift == 0 or not where.any():
            return tokens
        out = tokens.copy()
        out[where] = ids[np.clip(rank[tokens[where]] + shift, 0, len(ids) - 1)]
        return out

    def __call__(self, sample, rng: np.random.Generator):
        tokens = np.asarray(sample if isinstance(sample, np.ndarray) else sample.tokens)
        shifts = self.allowed_shifts(tokens)
        out = self.transpose(tokens, int(rng.choice(shifts)))
        if self.config.velocity_jitter and len(self._velocity_ids):
            shift = int(rng.integers(-self.config.velocity_jitter, self.config.velocity_jitter + 1))
            out = self._shift_bins(out, self._velocity, self._velocity_ids, shift)
        if self.config.tempo_jitter and len(self._tempo_ids) > 1:
            factor = 1.0 + float(rng.uniform(-self.config.tempo_jitter, self.config.tempo_jitter))
            out = self._scale_tempi(out, factor)
        return with_tokens(sample, out)

    def _scale_tempi(self, tokens: np.ndarray, factor: float) -> np.ndarray:
        where = self._tempo[tokens] >= 0
        if not where.any():
            return tokens
        out = tokens.copy()
        wanted = self._tempo_values[self._tempo[tokens[where]]] * factor
        nearest = np.abs(self._tempo_values[None, :] - wanted[:, None]).argmin(axis=1)
        out[where] = self._tempo_ids[nearest]
        return out

"""Training-set overlap: the longest run of notes a generated piece copies from the training data.

A memorisation check. Each piece becomes a sequence of note symbols (pitch, plus the
inter-onset interval from the previous note on the half-octave time grid of ``metrics``); the
longest run of consecutive symbols that also occurs, in order, inside one training piece is the
copied n-gram. The first note of a sequence has no previous note, so its symbol never matches
and a copy is under-counted by at most one note.

The index hashes every window of the training sequences with a 64-bit polynomial hash, built by
binary lifting in numpy (``O(N log L)`` per window length ``L``), only for lengths that are powers
of two (so all queries share a handful of tables); the exact length comes from extending the
copied windows symbol by symbol, which also rules out hash collisions.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .metrics import CHORD_TOLERANCE_S, LOG_TIME_EDGES, Performance

_N_GAP_CLASSES = len(LOG_TIME_EDGES) + 2  # chord, each time bin, "no previous note"
_NO_PREVIOUS = _N_GAP_CLASSES - 1
_BASE = np.uint64(0x9E3779B97F4A7C15)  # an odd 64-bit constant (golden ratio) as the hash base
_CACHE_LENGTHS = 48


def note_symbols(perf: Performance, with_ioi: bool = True, any_key: bool = False) -> np.ndarray:
    """One integer per note (onset order, chords low to high): pitch, or pitch and previous gap.

    ``any_key``: the interval from the previous note instead of the pitch, so a copy moved to
    another key has the same symbols (the first note, with no previous one, never matches).
    """
    pitch = perf.pitch.astype(np.int64)
    if any_key:
        interval = np.diff(pitch, prepend=-1000) + 128
        interval[:1] = 0
        pitch = interval  # 0..255: the step from the previous note, 0 for the first
    if not with_ioi or perf.n_notes == 0:
        return pitch
    gaps = np.diff(perf.onset, prepend=np.nan)
    gap_class = np.searchsorted(LOG_TIME_EDGES, gaps, side="right").astype(np.int64)
    gap_class = np.clip(gap_class, 1, len(LOG_TIME_EDGES))
    gap_class[gaps < CHORD_TOLERANCE_S] = 0
    gap_class[0] = _NO_PREVIOUS
    return pitch * _N_GAP_CLASSES + gap_class


def _power(exponent: int) -> np.uint64:
    return np.uint64(pow(int(_BASE), exponent, 1 << 64))


def window_hashes(symbols: np.ndarray, length: int) -> np.ndarray:
    """Polynomial hash of every window of ``length`` consecutive symbols (``len - length + 1`` of them)."""
    n = len(symbols)
    if length <= 0 or length > n:
        return np.zeros(0, dtype=np.uint64)
    # +1 so that symbol 0 still changes the hash
    block = symbols.astype(np.uint64) + np.uint64(1)
    block_len = 1
    result, result_len = None, 0
    remaining = length
    with np.errstate(over="ignore"):
        while True:
            if remaining & 1:
                if result is None:
                    result, result_len = block, block_len
                else:
                    m = n - (result_len + block_len) + 1
                    result = result[:m] * _power(block_len) + block[result_len:result_len + m]
                    result_len += block_len
            remaining >>= 1
            if not remaining:
                break
            m = n - 2 * block_len + 1
            block = block[:m] * _power(block_len) + block[block_len:block_len + m]
            block_len *= 2
    return result[: n - length + 1]


@dataclass
class CopiedRun:
    """The longest copied run of one query: its length in notes, and where it came from."""

    notes: int
    source: str | None = None  # the training piece it occurs in (None when nothing matched)
    query_start: int = -1  # index of the run's first note in the query


class NgramIndex:
    """All windows of a set of training note sequences, for longest-copied-run queries."""

    def __init__(self, sequences: Sequence[np.ndarray], names: Sequence[str] | None = None):
        seqs = [np.asarray(s, dtype=np.int64) for s in sequences]
        self.names = list(names) if names is not None else [str(i) for i in range(len(seqs))]
        self.symbols = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
        self.piece_of = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])
        self.longest_piece = max((len(s) for s in seqs), default=0)
        self._by_length: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    @classmethod
    def from_performances(cls, perfs: Sequence[Performance], names: Sequence[str] | None = None,
                          with_ioi: bool = True, any_key: bool = False) -> "NgramIndex":
        return cls([note_symbols(p, with_ioi, any_key) for p in perfs], names)

    def __len__(self) -> int:
        return int(len(self.symbols))

    def _windows(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Sorted hashes of every in-piece window of ``length``, and each one's start position."""
        if length in self._by_length:
            self._by_length.move_to_end(length)
            return self._by_length[length]
        hashes = window_hashes(self.symbols, length)
        start = np.arange(len(hashes))
        # a window must not run across the boundary between two training pieces
        inside = self.piece_of[start] == self.piece_of[start + length - 1] if len(hashes) else start.astype(bool)
        hashes, start = hashes[inside], start[inside]
        order = np.argsort(hashes, kind="stable")
        entry = (hashes[order], start[order])
        self._by_length[length] = entry
        if len(self._by_length) > _CACHE_LENGTHS:
            self._by_length.popitem(last=False)
        return entry

    def _any_copied(self, query: np.ndarray, length: int) -> bool:
        """Whether some window of ``length`` of the query hashes like a training window."""
        q = window_hashes(query, length)
        hashes, _ = self._windows(length)
        if len(q) == 0 or len(hashes) == 0:
            return False
        at = np.minimum(np.searchsorted(hashes, q), len(hashes) - 1)
        return bool((hashes[at] == q).any())

    def _seed_pairs(self, query: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Every (query position, training position) whose windows of ``length`` hash equal."""
        q = window_hashes(query, length)
        hashes, starts = self._windows(length)
        if len(q) == 0 or len(hashes) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        left = np.searchsorted(hashes, q, side="left")
        right = np.searchsorted(hashes, q, side="right")
        counts = right - left
        query_pos = np.repeat(np.arange(len(q)), counts)
        # the k-th pair of query window i takes training window left[i] + k
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return query_pos, starts[np.repeat(left, counts) + offsets]

    def longest_copied(self, query: np.ndarray) -> CopiedRun:
        """The longest run of consecutive query symbols that occurs inside one training piece.

        Window lengths 1, 2, 4, ... (shared by every query, so their hashes are built once) find
        the longest power of two ``s`` that is copied; the answer is then in ``[s, 2s)``, and
        every copy that long starts with a copied ``s``-window, so extending each such seed
        symbol by symbol finds it exactly (and the comparison rules out hash collisions).
        """
        query = np.asarray(query, dtype=np.int64)
        bound = min(len(query), self.longest_piece)
        seed_len, length = 0, 1
        while length <= bound and self._any_copied(query, length):
            seed_len, length = length, length * 2
        if seed_len == 0:
            return CopiedRun(0)
        qpos, tpos = self._seed_pairs(query, seed_len)
        run = np.zeros(len(qpos), dtype=np.int64)
        alive = np.ones(len(qpos), dtype=bool)
        for t in range(min(2 * seed_len - 1, bound)):
            qi, ti = qpos + t, tpos + t
            ok = alive & (qi < len(query)) & (ti < len(self.symbols))
            idx = np.flatnonzero(ok)
            ok[idx] = (query[qi[idx]] == self.symbols[ti[idx]]) & (self.piece_of[ti[idx]] == self.piece_of[tpos[idx]])
            run += ok
            alive = ok
            if not alive.any():
                break
        best = int(np.argmax(run))
        if run[best] == 0:
            return CopiedRun(0)
        return CopiedRun(int(run[best]), self.names[int(self.piece_of[tpos[best]])], int(qpos[best]))

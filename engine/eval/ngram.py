"""An interpolated Kneser-Ney n-gram model over the model's own tokens: the baseline every
likelihood is reported beside ("how much better than counting").

``KneserNey.fit(sequences, order)`` counts every n-gram up to ``order`` (each piece left-padded
with PAD, so the first tokens have short contexts). The probability of token w after context h
(the last n-1 tokens) interpolates down to the uniform distribution over the vocabulary:

    P_n(w | h) = max(c_n(h w) - D_n, 0) / c_n(h) + D_n * N1+(h .) / c_n(h) * P_{n-1}(w | h')

where h' drops the oldest token, c is the raw count at the highest order and the continuation
count (how many distinct tokens precede h w) below it, N1+(h .) counts the distinct tokens seen
after h, and D_n = n1 / (n1 + 2 n2) from the counts of counts of that order. A context never seen
passes its whole mass to the order below. ``choose_order`` picks the order on the training data
alone (a held-out share of the training pieces); ``fit_baseline`` then refits on all of them.

Everything is numpy: n-grams are 64-bit polynomial hashes of their tokens (a collision is about
1 in 10^9 at a million distinct n-grams), counted by sorting and looked up with
``np.searchsorted``. Only the queried n-grams are looked up and each order is counted when a
query is scored, so memory stays a few arrays the size of the (augmented) training data; all
orders of ``choose_order`` share one pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

_CTX_BASE = np.uint64(0x9E3779B97F4A7C15)  # extends a context by one older token
_TOKEN_BASE = np.uint64(0xC2B2AE3D27D4EB4F)  # joins a context and the predicted token
ORDERS = (1, 2, 3, 4, 6, 8, 12, 16)
LN2 = math.log(2.0)


def _extend(context: np.ndarray, flat: np.ndarray, piece_start: np.ndarray, k: int) -> np.ndarray:
    """Contexts one token longer: the k-th token back joins (PAD before a piece's start)."""
    j = np.arange(len(flat)) - k
    token = np.where(j >= piece_start, flat[np.maximum(j, 0)], 0).astype(np.uint64)  # PAD is id 0
    with np.errstate(over="ignore"):
        return context * _CTX_BASE + token + np.uint64(1)


def _group(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct keys sorted, the position of one occurrence of each, how often each occurs)."""
    order = np.argsort(keys)
    ordered = keys[order]
    first = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]])) if len(keys) else np.zeros(0, dtype=np.int64)
    counts = np.diff(np.concatenate([first, [len(keys)]]))
    return ordered[first], order[first], counts


def _join(context: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return context * _TOKEN_BASE + tokens.astype(np.uint64) + np.uint64(1)


def _discount(runs: np.ndarray) -> float:
    """D = n1 / (n1 + 2 n2) from how often each n-gram occurs (kept inside 0.05..0.95)."""
    n1, n2 = int((runs == 1).sum()), int((runs == 2).sum())
    discount = n1 / (n1 + 2 * n2) if n1 + n2 > 0 else 0.5
    return min(max(discount, 0.05), 0.95)


def _count_in(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    return (np.searchsorted(sorted_keys, queries, side="right") - np.searchsorted(sorted_keys, queries, side="left")).astype(np.float64)


def _lookup(distinct: np.ndarray, runs: np.ndarray, queries: np.ndarray) -> np.ndarray:
    if len(distinct) == 0:
        return np.zeros(len(queries))
    at = np.minimum(np.searchsorted(distinct, queries), len(distinct) - 1)
    return np.where(distinct[at] == queries, runs[at], 0).astype(np.float64)


def _raw_stats(t_full, t_ctx, q_full, q_ctx) -> tuple:
    """(count of each query n-gram, total after its context, distinct tokens after it, discount)."""
    distinct, reps, runs = _group(t_full)
    return (_lookup(distinct, runs, q_full), _count_in(np.sort(t_ctx), q_ctx),
            _count_in(np.sort(t_ctx[reps]), q_ctx), _discount(runs))


def _continuation_stats(t_full, t_ctx, t_full_longer, q_full, q_ctx) -> tuple:
    """The same with continuation counts: an n-gram counts the distinct tokens seen before it."""
    _, reps, _ = _group(t_full_longer)  # one position per distinct (n+1)-gram
    distinct, reps2, runs = _group(t_full[reps])
    contexts = t_ctx[reps]
    return (_lookup(distinct, runs, q_full), _count_in(np.sort(contexts), q_ctx),
            _count_in(np.sort(contexts[reps2]), q_ctx), _discount(runs))


def _mix(stats: tuple, lower: np.ndarray) -> np.ndarray:
    count, total, types, discount = stats
    seen = total > 0
    safe = np.where(seen, total, 1.0)
    return np.where(seen, np.maximum(count - discount, 0.0) / safe + discount * types / safe * lower, lower)


class KneserNey:
    """The training tokens, and the interpolated Kneser-Ney probabilities of any query under them.

    Only the n-grams a query needs are looked up; each order's counts are built from the training
    tokens when a query is scored (sorting a few arrays the size of the training data), so memory
    stays a few such arrays whatever the order and the data.
    """

    def __init__(self, flat: np.ndarray, starts: np.ndarray, vocab_size: int, order: int) -> None:
        self.flat, self.starts = flat, starts
        self.vocab_size = vocab_size
        self.order = order

    @classmethod
    def fit(cls, sequences: Sequence[Sequence[int]], vocab_size: int, order: int) -> "KneserNey":
        """A model of ``order`` over the sequences (each one piece)."""
        if order < 1:
            raise ValueError("an n-gram model needs order 1 or more")
        flat, starts = _flatten(sequences)
        return cls(flat, starts, vocab_size, order)

    def token_bits(self, sequences: Sequence[Sequence[int]], order: int | None = None) -> list[np.ndarray]:
        """Bits of each token of each sequence given its prefix (the first token of a piece is
        context only, as in the model's likelihood: each result has len(sequence) - 1 entries)."""
        order = self.order if order is None else order
        return self.token_bits_by_order(sequences, [order])[order]

    def token_bits_by_order(self, sequences: Sequence[Sequence[int]], orders: Sequence[int]) -> dict[int, list[np.ndarray]]:
        """``token_bits`` for several orders in one pass (the lower orders are shared)."""
        orders = sorted(set(int(n) for n in orders))
        if not orders or orders[0] < 1 or orders[-1] > self.order:
            raise ValueError(f"orders must lie in 1..{self.order}, not {orders}")
        q_flat, q_starts = _flatten(sequences)
        t_flat = self.flat
        t_piece = np.repeat(self.starts[:-1], np.diff(self.starts))
        q_piece = np.repeat(q_starts[:-1], np.diff(q_starts))
        t_ctx = np.zeros(len(t_flat), dtype=np.uint64)
        q_ctx = np.zeros(len(q_flat), dtype=np.uint64)
        lower = np.full(len(q_flat), 1.0 / self.vocab_size)
        out: dict[int, list[np.ndarray]] = {}
        for k in range(orders[-1]):  # n-grams of length k + 1: a context of k tokens
            t_full, q_full = _join(t_ctx, t_flat), _join(q_ctx, q_flat)
            if k + 1 in orders:
                bits = -np.log2(_mix(_raw_stats(t_full, t_ctx, q_full, q_ctx), lower))
                out[k + 1] = [bits[a + 1:b] for a, b in zip(q_starts[:-1], q_starts[1:])]
            if k + 1 < orders[-1]:
                t_longer = _extend(t_ctx, t_flat, t_piece, k + 1)
                lower = _mix(_continuation_stats(t_full, t_ctx, _join(t_longer, t_flat), q_full, q_ctx), lower)
                t_ctx, q_ctx = t_longer, _extend(q_ctx, q_flat, q_piece, k + 1)
        return out


def _flatten(sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    arrays = [np.asarray(s, dtype=np.int64) for s in sequences]
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)
    return flat, starts


def transposed(sequences: Sequence[Sequence[int]], tokenizer, semitones: int) -> list[list[int]]:
    """Each sequence moved by ``semitones`` (as training augmentation does); a piece that would leave
    the keyboard is left out of that transposition."""
    table = tokenizer.transpose_table(semitones)
    out = []
    for seq in sequences:
        moved = table[np.asarray(seq, dtype=np.int64)]
        if (moved >= 0).all():
            out.append(moved.tolist())
    return out


def augmented(sequences: Sequence[Sequence[int]], tokenizer, transpose_range: int) -> list[list[int]]:
    """The sequences at every transposition in -range..+range (the training augmentation's set)."""
    out = [list(map(int, s)) for s in sequences]
    for semitones in range(-transpose_range, transpose_range + 1):
        if semitones:
            out += transposed(sequences, tokenizer, semitones)
    return out


def choose_order(training: Sequence[Sequence[int]], tokenizer, transpose_range: int,
                 orders: Sequence[int] = ORDERS, held_out_share: float = 0.1, seed: int = 0) -> tuple[int, dict[int, float]]:
    """The order with the fewest bits per token on a held-out share of the training pieces
    (fitted on the rest, augmented). Returns (order, {order: bits per token})."""
    pieces = [list(map(int, s)) for s in training]
    if len(pieces) < 2:
        return min(orders[-1], 4), {}
    order_of = np.random.default_rng(seed).permutation(len(pieces))
    n_held = max(1, int(round(held_out_share * len(pieces))))
    held = [pieces[i] for i in order_of[:n_held]]
    rest = [pieces[i] for i in order_of[n_held:]]
    model = KneserNey.fit(augmented(rest, tokenizer, transpose_range), tokenizer.vocab_size, max(orders))
    scores = {}
    for n, per_piece in model.token_bits_by_order(held, orders).items():
        bits = np.concatenate(per_piece)
        scores[n] = float(bits.mean()) if len(bits) else math.inf
    return min(scores, key=scores.get), scores


@dataclass
class Baseline:
    model: KneserNey
    order: int
    transpose_range: int
    held_out_bits_per_token: dict[int, float]


def fit_baseline(training: Sequence[Sequence[int]], tokenizer, transpose_range: int,
                 orders: Sequence[int] = ORDERS, on_stage: Callable[[str], None] | None = None) -> Baseline:
    """Choose the order on the training pieces, then fit that order on all of them (augmented)."""
    if on_stage:
        on_stage("choosing the order")
    order, scores = choose_order(training, tokenizer, transpose_range, orders)
    if on_stage:
        on_stage("fitting")
    model = KneserNey.fit(augmented(training, tokenizer, transpose_range), tokenizer.vocab_size, order)
    return Baseline(model, order, transpose_range, scores)

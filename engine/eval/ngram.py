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
1 in 10^9 at a million distinct n-grams), counted with ``np.unique`` and looked up with
``np.searchsorted``, so a few million training tokens fit in seconds.
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


def _contexts(flat: np.ndarray, starts: np.ndarray, max_len: int) -> list[np.ndarray]:
    """Hashes of the contexts of length 0..max_len before every position."""
    piece_start = np.repeat(starts[:-1], np.diff(starts))
    out = [np.zeros(len(flat), dtype=np.uint64)]
    for k in range(1, max_len + 1):
        out.append(_extend(out[-1], flat, piece_start, k))
    return out


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


@dataclass
class _Level:
    """Counts of one order: n-gram keys with their counts, context keys with their totals and N1+."""

    keys: np.ndarray
    counts: np.ndarray
    ctx_keys: np.ndarray
    ctx_totals: np.ndarray
    ctx_types: np.ndarray
    discount: float

    @classmethod
    def of(cls, keys: np.ndarray, counts: np.ndarray, ctx_of_key: np.ndarray) -> "_Level":
        n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
        discount = n1 / (n1 + 2 * n2) if n1 + n2 > 0 else 0.5
        ctx_keys, inverse = np.unique(ctx_of_key, return_inverse=True)
        totals = np.bincount(inverse, weights=counts, minlength=len(ctx_keys))
        types = np.bincount(inverse, minlength=len(ctx_keys))
        return cls(keys, counts.astype(np.float32), ctx_keys, totals.astype(np.float32), types.astype(np.float32),
                   min(max(discount, 0.05), 0.95))

    @staticmethod
    def _find(sorted_keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
        if len(sorted_keys) == 0:
            return np.zeros(len(queries))
        at = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
        return np.where(sorted_keys[at] == queries, values[at], 0.0)

    def lookup(self, ngram: np.ndarray, context: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (self._find(self.keys, self.counts, ngram), self._find(self.ctx_keys, self.ctx_totals, context),
                self._find(self.ctx_keys, self.ctx_types, context))


class KneserNey:
    def __init__(self, vocab_size: int, order: int, raw: dict[int, _Level], continuation: list[_Level]) -> None:
        self.vocab_size = vocab_size
        self.order = order
        self._raw = raw  # raw[n]: n-grams of length n with raw counts (the top order of an order-n model)
        self._cont = continuation  # continuation[k]: n-grams of length k + 1 with continuation counts

    @classmethod
    def fit(cls, sequences: Sequence[Sequence[int]], vocab_size: int, order: int,
            raw_orders: Sequence[int] | None = None) -> "KneserNey":
        """Count every n-gram up to ``order`` in the sequences (each one piece). ``raw_orders``:
        the lower orders this model will also be asked for (``token_bits(order=n)``)."""
        if order < 1:
            raise ValueError("an n-gram model needs order 1 or more")
        flat, starts = _flatten(sequences)
        piece_start = np.repeat(starts[:-1], np.diff(starts))
        raw_orders = set(raw_orders or ()) | {order}
        raw: dict[int, _Level] = {}
        cont: list[_Level] = []
        # two context lengths at a time: memory stays a few arrays whatever the order
        context = np.zeros(len(flat), dtype=np.uint64)
        for k in range(order):  # n-grams of length k + 1: a context of k tokens
            longer = _extend(context, flat, piece_start, k + 1)
            full = _join(context, flat)
            if k + 1 in raw_orders:
                keys, at, counts = _group(full)
                raw[k + 1] = _Level.of(keys, counts, context[at])
            if k + 1 < order:
                # continuation count of (context, w): how many distinct (k + 2)-grams end in it
                _, at_longer, _ = _group(_join(longer, flat))
                keys, at, counts = _group(full[at_longer])
                cont.append(_Level.of(keys, counts, context[at_longer][at]))
            context = longer
        return cls(vocab_size, order, raw, cont)

    def token_bits(self, sequences: Sequence[Sequence[int]], order: int | None = None) -> list[np.ndarray]:
        """Bits of each token of each sequence given its prefix (the first token of a piece is
        context only, as in the model's likelihood: each result has len(sequence) - 1 entries)."""
        order = self.order if order is None else order
        if order not in self._raw:
            raise ValueError(f"this model was not fitted for order {order} (orders: {sorted(self._raw)})")
        flat, starts = _flatten(sequences)
        if len(flat) == 0:
            return [np.zeros(0) for _ in sequences]
        contexts = _contexts(flat, starts, order - 1)
        p = np.full(len(flat), 1.0 / self.vocab_size)
        for k in range(order):
            level = self._raw[order] if k == order - 1 else self._cont[k]
            count, total, types = level.lookup(_join(contexts[k], flat), contexts[k])
            seen = total > 0
            safe = np.where(seen, total, 1.0)
            mixed = np.maximum(count - level.discount, 0.0) / safe + level.discount * types / safe * p
            p = np.where(seen, mixed, p)
        bits = -np.log2(p)
        out = []
        for a, b in zip(starts[:-1], starts[1:]):
            out.append(bits[a + 1:b])
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
    model = KneserNey.fit(augmented(rest, tokenizer, transpose_range), tokenizer.vocab_size, max(orders), raw_orders=orders)
    scores = {}
    for n in orders:
        bits = np.concatenate(model.token_bits(held, n))
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

"""Training samples cut from a token store: completion windows, packed LM chunks, and collate.

Completion window (the original project's sample): N context bars, then M completion bars,
starting every ``stride_bars`` bars, cut only at bar starts. Each window opens with BOS and the
musical state in force where it starts (time signature, tempo) written where the tokenization
puts it, so a window decodes on its own. ``ctx_len`` counts BOS + state + context AFTER any
shortening to ``max_len``; the loss (``engine.model.loss``) covers exactly the completion tokens.

Shortening to ``max_len``: the oldest context bars go first (the state is recomputed for the new
first bar); if one context bar plus the completion is still too long, the completion is cut at
its end; a window whose context alone leaves no completion token is skipped.

Packed LM chunks: the pieces as BOS ... EOS documents back to back, cut into chunks of exactly
``ctx_len`` tokens (no padding); each chunk lists where documents begin inside it, which is the
``cu_seqlens`` of the varlen kernel.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


@dataclass
class CompletionWindow:
    tokens: np.ndarray  # int64: BOS, state, context bars, completion bars (EOS when the piece ends)
    ctx_len: int  # BOS + state + context tokens; position ctx_len - 1 predicts the first completion token
    piece: int = -1
    start_bar: int = 0  # first context bar (after any shortening)
    completion_bar: int = 0  # first completion bar

    @property
    def completion(self) -> np.ndarray:
        return self.tokens[self.ctx_len:]


@dataclass
class PackedChunk:
    tokens: np.ndarray  # int64, exactly ctx_len tokens
    doc_starts: tuple[int, ...]  # offsets where a document (or the chunk) begins; 0 first

    @property
    def cu_seqlens(self) -> np.ndarray:
        return np.array([*self.doc_starts, len(self.tokens)], dtype=np.int64)


# ---- the musical state at a cut ------------------------------------------------------------------
class _StateTokens:
    """Ids the state re-insertion needs, looked up once per tokenizer."""

    def __init__(self, tokenizer):
        self.tokenization = tokenizer.tokenization
        kind_of = tokenizer.kind_of_id
        kinds = tokenizer.kinds
        self.is_tempo = kind_of == kinds.index("Tempo") if "Tempo" in kinds else np.zeros(tokenizer.vocab_size, bool)
        self.is_timesig = kind_of == kinds.index("TimeSig") if "TimeSig" in kinds else np.zeros(tokenizer.vocab_size, bool)
        self.is_position = kind_of == kinds.index("Position") if "Position" in kinds else np.zeros(tokenizer.vocab_size, bool)
        self.bar = tokenizer.token_id("Bar_None") if "Bar" in kinds else -1
        self.position0 = tokenizer.token_id("Position_0") if "Position" in kinds else -1
        self.bos, self.eos = tokenizer.bos_id, tokenizer.eos_id


def _last_before(mask: np.ndarray, tokens: np.ndarray, end: int) -> int | None:
    hits = np.flatnonzero(mask[tokens[:end]])
    return int(tokens[hits[-1]]) if len(hits) else None


def state_prefix(tokens: np.ndarray, start: int, state: _StateTokens) -> tuple[list[int], int]:
    """(tokens to emit before ``tokens[start:]`` is continued, how many source tokens they replace).

    REMI: a bar reads ``Bar [TimeSig] Position_p [Tempo] ...`` (or, after a Rest, starts at its
    Position and gets a Bar here); the time signature in force goes
    after Bar when the bar lacks one, and the tempo in force goes right after ``Position_0``
    (inserting ``Position_0`` when the bar's first event is later) unless the bar sets its own.
    Time-shift tokenizations: ``TimeSig Tempo`` open the window unless it opens with them.
    """
    timesig = _last_before(state.is_timesig, tokens, start)
    tempo = _last_before(state.is_tempo, tokens, start)
    if state.tokenization != "REMI":
        head = []
        opening = tokens[start:start + 2]
        if timesig is not None and not state.is_timesig[opening].any():
            head.append(timesig)
        if tempo is not None and not state.is_tempo[opening].any():
            head.append(tempo)
        return head, 0
    # a bar MidiTok entered through a Rest starts at its Position token: give it its Bar
    out = [state.bar]
    i = start + 1 if tokens[start] == state.bar else start
    if i < len(tokens) and state.is_timesig[tokens[i]]:
        out.append(int(tokens[i]))
        i += 1
    elif timesig is not None:
        out.append(timesig)
    if tempo is None:
        return out, i - start
    if i < len(tokens) and tokens[i] == state.position0:
        out.append(state.position0)
        i += 1
        if i < len(tokens) and state.is_tempo[tokens[i]]:
            return out, i - start  # the bar sets its own tempo at its start
        out.append(tempo)
        return out, i - start
    out.extend([state.position0, tempo])
    return out, i - start


def _window(tokens: np.ndarray, bars: np.ndarray, first: int, split: int, stop: int, state: _StateTokens) -> tuple[np.ndarray, int]:
    """(ids, ctx_len) of context bars [first, split) + completion bars [split, stop)."""
    begin = int(bars[first])
    mid = int(bars[split])
    end = int(bars[stop]) if stop < len(bars) else len(tokens)
    head, replaced = state_prefix(tokens, begin, state)
    context = np.concatenate([[state.bos], head, tokens[begin + replaced:mid]]).astype(np.int64)
    completion = tokens[mid:end].astype(np.int64)
    if stop >= len(bars):
        completion = np.concatenate([completion, [state.eos]])
    return np.concatenate([context, completion]), len(context)


def completion_windows(
    tokens: np.ndarray,
    bars: Sequence[int] | np.ndarray,
    tokenizer,
    context_bars: int = 8,
    completion_bars: int = 4,
    stride_bars: int = 2,
    max_len: int = 1024,
    piece: int = -1,
) -> list[CompletionWindow]:
    """The completion windows of one piece (``tokens`` and ``bars`` as ``TokenStore`` gives them)."""
    if completion_bars < 1 or stride_bars < 1 or context_bars < 0:
        raise ValueError("completion_bars and stride_bars must be >= 1 and context_bars >= 0")
    tokens = np.asarray(tokens)
    bars = np.asarray(bars, dtype=np.int64)
    state = _StateTokens(tokenizer)
    out: list[CompletionWindow] = []
    n_bars = len(bars)
    for start in range(0, max(0, n_bars - context_bars), stride_bars):
        split = start + context_bars
        if split >= n_bars:
            break
        stop = min(split + completion_bars, n_bars)
        first = start
        ids, ctx = _window(tokens, bars, first, split, stop, state)
        while len(ids) > max_len and first < split - 1:
            first += 1  # drop the oldest context bar, state recomputed for the new first bar
            ids, ctx = _window(tokens, bars, first, split, stop, state)
        if len(ids) > max_len:
            ids = ids[:max_len]  # the completion's end is cut; the context stays whole
        if ctx >= len(ids):
            continue  # not even one completion token fits
        out.append(CompletionWindow(ids, ctx, piece, first, split))
    return out


def store_completion_windows(store, split: str | None, **kwargs) -> list[CompletionWindow]:
    """``completion_windows`` of every piece of a split of a ``TokenStore``."""
    tokenizer = store.tokenizer
    out: list[CompletionWindow] = []
    for piece in store.pieces(split):
        out.extend(completion_windows(store.tokens(piece), store.bars(piece), tokenizer, piece=piece.index, **kwargs))
    return out


def packed_chunks(documents: Iterable[np.ndarray], ctx_len: int, bos_id: int = 1, eos_id: int = 2,
                  keep_tail: bool = False) -> list[PackedChunk]:
    """``BOS doc EOS`` documents back to back, cut into chunks of exactly ``ctx_len`` tokens.

    The last, shorter remainder is dropped (no padding) unless ``keep_tail``. A document cut by a
    chunk boundary continues at offset 0 of the next chunk, which starts a fresh sequence there.
    """
    if ctx_len < 2:
        raise ValueError("ctx_len must be at least 2")
    parts, starts, offset = [], [], 0
    for doc in documents:
        parts.append(np.concatenate([[bos_id], np.asarray(doc, dtype=np.int64), [eos_id]]).astype(np.int64))
        starts.append(offset)
        offset += len(parts[-1])
    if not parts:
        return []
    stream = np.concatenate(parts)
    doc_starts = np.asarray(starts, dtype=np.int64)
    chunks = []
    for begin in range(0, len(stream), ctx_len):
        end = begin + ctx_len
        if end > len(stream) and not keep_tail:
            break
        inside = doc_starts[(doc_starts > begin) & (doc_starts < end)] - begin
        chunks.append(PackedChunk(stream[begin:end].copy(), (0, *map(int, inside))))
    return chunks


def store_packed_chunks(store, split: str | None, ctx_len: int, **kwargs) -> list[PackedChunk]:
    tok = store.tokenizer
    return packed_chunks((store.tokens(p) for p in store.pieces(split)), ctx_len, tok.bos_id, tok.eos_id, **kwargs)


# ---- collate -------------------------------------------------------------------------------------
def collate(samples: Sequence, pad_id: int = 0) -> dict:
    """Batch tensors for the model and ``engine.model.loss``.

    Completion windows -> ``{"input_ids" [B, T] padded with pad_id, "attention_mask" [B, T],
    "ctx_lengths" [B]}``. Packed chunks -> ``{"input_ids" [1, B*T], "cu_seqlens" [n+1]}`` (the
    model's varlen form: rows laid end to end, every row start is also a sequence start).
    """
    import torch

    if not samples:
        raise ValueError("collate needs at least one sample")
    if all(getattr(s, "doc_starts", None) is not None for s in samples):
        flat, bounds, offset = [], [], 0
        for s in samples:
            flat.append(np.asarray(s.tokens, dtype=np.int64))
            bounds.extend(offset + int(d) for d in s.doc_starts)
            offset += len(s.tokens)
        return {"input_ids": torch.from_numpy(np.concatenate(flat)).view(1, -1),
                "cu_seqlens": torch.tensor([*bounds, offset], dtype=torch.long)}
    width = max(len(s.tokens) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s.tokens)
        ids[row, :n] = torch.from_numpy(np.asarray(s.tokens, dtype=np.int64))
        mask[row, :n] = 1
    ctx = torch.tensor([int(s.ctx_len) for s in samples], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "ctx_lengths": ctx}


def with_tokens(sample, tokens: np.ndarray):
    """A copy of a sample (window, chunk, or any dataclass with ``tokens``) holding new tokens."""
    if isinstance(sample, np.ndarray):
        return tokens
    return dataclasses.replace(sample, tokens=tokens)

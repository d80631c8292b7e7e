"""Likelihood of held-out music: nats and bits per token, per note and per second.

Bits per token depend on the tokenizer (REMI spends more tokens per note than TSD), so the report
also divides the same total by the number of notes and by the seconds of music the evaluated
targets cover: those compare across tokenizers.

Each piece is read as one sequence, in chunks whose recurrent state carries over, so every
target token is predicted from the whole piece before it (what the model sees when it plays).
The first token of a piece is context only; the targets are tokens 1..n-1.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

import torch
import torch.nn.functional as F

from .validity import count_notes

LN2 = math.log(2.0)


@dataclass
class LikelihoodResult:
    """Totals over the evaluated targets, and the per-unit rates derived from them."""

    nats: float  # summed negative log-likelihood of all targets
    tokens: int  # target tokens
    notes: int  # notes among the targets (one Pitch token each)
    seconds: float  # music the targets cover
    pieces: int
    # per scored piece: its tokens as scored (cut at the token budget) and each target's nats
    scored: list[list[int]] = field(default_factory=list, repr=False)
    target_nats: list[np.ndarray] = field(default_factory=list, repr=False)
    scored_index: list[int] = field(default_factory=list, repr=False)  # which of the given pieces they are

    @property
    def nats_per_token(self) -> float:
        return self.nats / self.tokens if self.tokens else math.nan

    @property
    def bits(self) -> float:
        return self.nats / LN2

    @property
    def bits_per_token(self) -> float:
        return self.nats_per_token / LN2

    @property
    def bits_per_note(self) -> float:
        return self.bits / self.notes if self.notes else math.nan

    @property
    def bits_per_second(self) -> float:
        return self.bits / self.seconds if self.seconds > 0 else math.nan

    def to_dict(self) -> dict:
        out = {"nats": self.nats, "tokens": self.tokens, "notes": self.notes, "seconds": self.seconds, "pieces": self.pieces}
        out.update(
            nats_per_token=self.nats_per_token,
            bits_per_token=self.bits_per_token,
            bits_per_note=self.bits_per_note,
            bits_per_second=self.bits_per_second,
        )
        return out


def music_seconds(tokens: Sequence[int], tokenizer) -> float:
    """Seconds from the first onset to the last release of the decoded tokens (0 if none decode)."""
    from .metrics import Performance

    try:
        perf = Performance.from_score(tokenizer.decode(list(tokens)))
    except Exception:  # noqa: BLE001  (a piece that cannot decode covers no music)
        return 0.0
    return perf.span()


@torch.no_grad()
def token_nats(model, tokens: Sequence[int], chunk_len: int = 1024) -> np.ndarray:
    """NLL (nats) of each of tokens[1:] given its prefix."""
    ids = torch.as_tensor(list(tokens), dtype=torch.long, device=next(model.parameters()).device)
    if ids.numel() < 2:
        return np.zeros(0)
    parts = []
    state = None
    # chunk over inputs 0..n-2; input t predicts token t+1
    inputs, targets = ids[:-1], ids[1:]
    for start in range(0, inputs.numel(), chunk_len):
        chunk = inputs[start:start + chunk_len].unsqueeze(0)
        logits, state = model(chunk, state=state, return_state=True)
        parts.append(F.cross_entropy(logits[0].float(), targets[start:start + chunk_len], reduction="none").double().cpu())
    return torch.cat(parts).numpy()


def sequence_nats(model, tokens: Sequence[int], chunk_len: int = 1024) -> tuple[float, int]:
    """Summed NLL (nats) of tokens[1:] given their prefixes, and the number of targets."""
    nats = token_nats(model, tokens, chunk_len)
    return float(nats.sum()), int(nats.size)


def evaluate_likelihood(
    model,
    tokenizer,
    pieces: Iterable[Sequence[int]],
    max_tokens: int | None = None,
    chunk_len: int = 1024,
    on_piece: Callable[[int], None] | None = None,
) -> LikelihoodResult:
    """Likelihood over whole pieces, stopping after ``max_tokens`` targets (the last piece is cut)."""
    nats, n_tokens, notes, seconds, n_pieces = 0.0, 0, 0, 0.0, 0
    scored, per_target, scored_index = [], [], []
    was_training = model.training
    model.eval()
    try:
        for index, tokens in enumerate(pieces):
            tokens = [int(t) for t in tokens]
            if max_tokens is not None:
                room = max_tokens - n_tokens
                if room <= 0:
                    break
                tokens = tokens[: room + 1]
            each = token_nats(model, tokens, chunk_len)
            if each.size == 0:
                continue
            scored.append(tokens)
            per_target.append(each)
            scored_index.append(index)
            nats += float(each.sum())
            n_tokens += int(each.size)
            notes += count_notes(tokens[1:], tokenizer)
            seconds += music_seconds(tokens, tokenizer)
            n_pieces += 1
            if on_piece is not None:
                on_piece(n_pieces)
    finally:
        model.train(was_training)
    return LikelihoodResult(nats=nats, tokens=n_tokens, notes=notes, seconds=seconds, pieces=n_pieces,
                            scored=scored, target_nats=per_target, scored_index=scored_index)


def style_of(name: str) -> str:
    """A piece's style: the folder it is in (the demo corpus keeps one folder per style)."""
    return Path(name).parent.name or "(top level)"


def bits_breakdown(pieces: Sequence[Sequence[int]], names: Sequence[str], bits: Sequence[np.ndarray], tokenizer) -> dict:
    """Where the bits go: per token kind (bits per note that kind costs, and its share), and per
    style (bits per note and per token of that style's pieces). ``bits[i]`` holds the bits of
    ``pieces[i][1:]``."""
    note_ids = np.zeros(tokenizer.vocab_size, dtype=bool)
    note_ids[tokenizer.note_start_ids()] = True
    kind_of = np.asarray(tokenizer.kind_of_id)
    by_kind = np.zeros(len(tokenizer.kinds))
    tokens_of_kind = np.zeros(len(tokenizer.kinds), dtype=np.int64)
    styles: dict[str, dict] = defaultdict(lambda: {"pieces": 0, "tokens": 0, "notes": 0, "bits": 0.0})
    total_notes = 0
    for tokens, name, b in zip(pieces, names, bits):
        targets = np.asarray(tokens[1:], dtype=np.int64)
        np.add.at(by_kind, kind_of[targets], b)
        np.add.at(tokens_of_kind, kind_of[targets], 1)
        notes = int(note_ids[targets].sum())
        total_notes += notes
        entry = styles[style_of(name)]
        entry["pieces"] += 1
        entry["tokens"] += int(targets.size)
        entry["notes"] += notes
        entry["bits"] += float(np.sum(b))
    total = float(by_kind.sum())
    kinds = {kind: {"tokens": int(tokens_of_kind[k]), "bits_per_note": float(by_kind[k] / total_notes) if total_notes else math.nan,
                    "share": float(by_kind[k] / total) if total else math.nan}
             for k, kind in enumerate(tokenizer.kinds) if tokens_of_kind[k]}
    for entry in styles.values():
        entry["bits_per_note"] = entry["bits"] / entry["notes"] if entry["notes"] else math.nan
        entry["bits_per_token"] = entry["bits"] / entry["tokens"] if entry["tokens"] else math.nan
    return {"kinds": kinds, "styles": dict(sorted(styles.items()))}

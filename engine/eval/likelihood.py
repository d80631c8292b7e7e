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
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

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
        out = asdict(self)
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
def sequence_nats(model, tokens: Sequence[int], chunk_len: int = 1024) -> tuple[float, int]:
    """Summed NLL (nats) of tokens[1:] given their prefixes, and the number of targets."""
    ids = torch.as_tensor(list(tokens), dtype=torch.long, device=next(model.parameters()).device)
    if ids.numel() < 2:
        return 0.0, 0
    total = 0.0
    state = None
    # chunk over inputs 0..n-2; input t predicts token t+1
    inputs, targets = ids[:-1], ids[1:]
    for start in range(0, inputs.numel(), chunk_len):
        chunk = inputs[start:start + chunk_len].unsqueeze(0)
        logits, state = model(chunk, state=state, return_state=True)
        total += float(F.cross_entropy(logits[0].float(), targets[start:start + chunk_len], reduction="sum"))
    return total, int(targets.numel())


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
    was_training = model.training
    model.eval()
    try:
        for tokens in pieces:
            tokens = [int(t) for t in tokens]
            if max_tokens is not None:
                room = max_tokens - n_tokens
                if room <= 0:
                    break
                tokens = tokens[: room + 1]
            piece_nats, piece_targets = sequence_nats(model, tokens, chunk_len)
            if piece_targets == 0:
                continue
            nats += piece_nats
            n_tokens += piece_targets
            notes += count_notes(tokens[1:], tokenizer)
            seconds += music_seconds(tokens, tokenizer)
            n_pieces += 1
            if on_piece is not None:
                on_piece(n_pieces)
    finally:
        model.train(was_training)
    return LikelihoodResult(nats=nats, tokens=n_tokens, notes=notes, seconds=seconds, pieces=n_pieces)

"""Is a generated token sequence well-formed music? Invalid tokens and stuck notes.

- An invalid token is one whose kind may not follow the previous token's kind in the
  tokenizer's grammar (``grammar_next_kinds``), or any token outside the vocabulary. A sequence
  that fails to decode at all counts every token as invalid.
- A stuck note is a note that never got its release: a Pitch token that did not become a
  decoded note (its Velocity/Duration never came), or a decoded note held longer than
  ``STUCK_NOTE_S`` seconds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .metrics import STUCK_NOTE_S, Performance, stuck_notes


@dataclass
class TokenValidity:
    tokens: int
    invalid_tokens: int
    notes_started: int  # Pitch tokens
    notes_unreleased: int  # Pitch tokens that did not decode into a note
    notes_too_long: int
    decoded: bool

    @property
    def stuck_notes(self) -> int:
        return self.notes_unreleased + self.notes_too_long


def count_notes(tokens: Sequence[int], tokenizer) -> int:
    """Notes in a token sequence: each note has exactly one opening token (Pitch or NoteOn)."""
    note_ids = set(tokenizer.note_start_ids())
    return sum(1 for t in tokens if int(t) in note_ids)


def grammar_violations(tokens: Sequence[int], tokenizer, previous: int | None = None) -> int:
    """Tokens whose kind may not follow the kind before them (``previous`` precedes the first)."""
    vocab = tokenizer.vocab_size
    allowed_after: dict[str, set[str]] = {}
    prev_kind = tokenizer.token_kind(int(previous)) if previous is not None else None
    bad = 0
    for token in tokens:
        token = int(token)
        if not 0 <= token < vocab:
            bad += 1
            prev_kind = None
            continue
        kind = tokenizer.token_kind(token)
        if prev_kind is not None:
            if prev_kind not in allowed_after:
                allowed_after[prev_kind] = set(tokenizer.grammar_next_kinds(prev_kind))
            if kind not in allowed_after[prev_kind]:
                bad += 1
        prev_kind = kind
    return bad


def check_continuation(
    generated: Sequence[int],
    tokenizer,
    continuation: Performance | None,
    previous: int | None = None,
    limit_s: float = STUCK_NOTE_S,
) -> TokenValidity:
    """Validity of generated tokens; ``continuation`` is what they decoded to (None: decoding failed)."""
    started = count_notes(generated, tokenizer)
    if continuation is None:
        return TokenValidity(len(generated), len(generated), started, started, 0, decoded=False)
    invalid = grammar_violations(generated, tokenizer, previous)
    unreleased = max(started - continuation.n_notes, 0)
    return TokenValidity(len(generated), invalid, started, unreleased, stuck_notes(continuation, limit_s), decoded=True)

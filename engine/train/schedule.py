"""Learning rate: linear warm-up from 1% over the first steps, then a cosine in TOKENS.

lr(step, tokens) = warmup(step) * (lr_final + (lr - lr_final) * (1 + cos(pi * p)) / 2),
p = min(tokens / total_tokens, 1), warmup(step) = 0.01 + 0.99 * min(step / warmup_steps, 1).

Counting in tokens (not steps) keeps the decay honest when batches carry different numbers of
real tokens (completion windows are padded) and when a resumed run changes its batch size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CosineTokenSchedule:
    lr: float
    lr_final: float
    warmup_steps: int
    total_tokens: int

    def warmup_factor(self, step: int) -> float:
        if self.warmup_steps <= 0:
            return 1.0
        return 0.01 + 0.99 * min(step / self.warmup_steps, 1.0)

    def progress(self, tokens: int) -> float:
        if self.total_tokens <= 0:
            return 0.0
        return min(max(tokens / self.total_tokens, 0.0), 1.0)

    def __call__(self, step: int, tokens: int) -> float:
        """The learning rate for optimizer step ``step`` (0-based) after ``tokens`` trained tokens."""
        cosine = 0.5 * (1.0 + math.cos(math.pi * self.progress(tokens)))
        return self.warmup_factor(step) * (self.lr_final + (self.lr - self.lr_final) * cosine)

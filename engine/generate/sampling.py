"""Sampling next tokens: penalties over a window, grammar mask, temperature, top-k, top-p, min-p.

Each row draws with its own torch.Generator, so a row's continuation depends only on its own seed
and history: rewinding one alternative replays it exactly while the others keep going.
"""
from __future__ import annotations

import math

import torch

from .defaults import DEFAULT_BARS, SamplingConfig  # noqa: F401  (re-exported: the sampler's config)


class NonFiniteLogits(ValueError):
    """The model's output held NaN or inf: its recurrent state overflowed (an unstable checkpoint)."""


def row_seed(seed: int, row: int) -> int:
    """Independent, reproducible stream per alternative."""
    return (seed * 1_000_003 + row * 7919) % (2**63 - 1)


def apply_penalties(logits: torch.Tensor, recent: list[list[int]], config: SamplingConfig) -> torch.Tensor:
    """logits [B, V]; recent[b]: the last ``penalty_window`` tokens of row b."""
    if config.repetition_penalty == 1.0 and config.presence_penalty == 0.0:
        return logits
    logits = logits.clone()
    for b, tokens in enumerate(recent):
        if not tokens:
            continue
        ids = torch.as_tensor(sorted(set(tokens)), dtype=torch.long, device=logits.device)
        seen = logits[b, ids]
        if config.repetition_penalty != 1.0:
            seen = torch.where(seen > 0, seen / config.repetition_penalty, seen * config.repetition_penalty)
        logits[b, ids] = seen - config.presence_penalty
    return logits


def filter_logits(logits: torch.Tensor, allowed: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Masked, temperature-scaled, truncated logits [B, V] (-inf where a token may not be drawn)."""
    logits = logits.float().masked_fill(~allowed, -math.inf)
    if config.temperature == 0:
        return logits
    logits = logits / config.temperature
    if config.top_k > 0 and config.top_k < logits.shape[-1]:
        kth = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    if config.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop_sorted = before >= config.top_p  # keep the smallest prefix whose mass reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -math.inf)
    if config.min_p > 0:
        logits = logits.masked_fill(probs < config.min_p * probs.max(dim=-1, keepdim=True).values, -math.inf)
    return logits


def sample_rows(logits: torch.Tensor, allowed: torch.Tensor, config: SamplingConfig, generators: list[torch.Generator], recent: list[list[int]]) -> list[int]:
    """One token per row, never outside ``allowed``."""
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteLogits(
            "the model's output is not finite (NaN or inf): its recurrent state overflowed, as some "
            "checkpoints' states do on long sequences. Start again (a fresh state), or use another checkpoint")
    logits = filter_logits(apply_penalties(logits, recent, config), allowed, config)
    if config.temperature == 0:
        return logits.argmax(dim=-1).tolist()
    probs = torch.softmax(logits, dim=-1).cpu()  # the row generators live on the CPU, whatever the model's device
    return [int(torch.multinomial(probs[b], 1, generator=generators[b])) for b in range(probs.shape[0])]


def sample_token(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None = None,
                 banned: tuple[int, ...] = ()) -> int:
    """One token from one row of logits [V] (no grammar): ``sample_rows`` for a single row, ``banned`` never drawn."""
    allowed = torch.ones(1, logits.shape[-1], dtype=torch.bool, device=logits.device)
    if banned:
        allowed[0, list(banned)] = False
    generator = generator if generator is not None else torch.default_generator  # the global RNG, as torch.multinomial uses
    return sample_rows(logits.reshape(1, -1), allowed, config, [generator], [[]])[0]

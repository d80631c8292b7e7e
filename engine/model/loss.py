"""Completion-only loss with ONE boolean mask for logits and targets (the alignment rule).

Position t predicts token t + 1. For a row with context length c and v valid (non-padding)
tokens, the completion positions are t in [c - 1, v - 2]: position c - 1 predicts the first
completion token, and no position at or after padding is used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def valid_lengths(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, padding_token_id: int = 0) -> torch.Tensor:
    """Number of real tokens per row: up to the first padding (by mask if given, else by pad id)."""
    keep = attention_mask.bool() if attention_mask is not None else input_ids.ne(padding_token_id)
    # a position counts only if every position before it is real too
    return keep.long().cumprod(dim=1).sum(dim=1)


def completion_mask(
    input_ids: torch.Tensor,
    ctx_lengths: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    padding_token_id: int = 0,
) -> torch.Tensor:
    """Bool [B, T]: True at positions whose next-token prediction is a completion token."""
    B, T = input_ids.shape
    pos = torch.arange(T, device=input_ids.device).unsqueeze(0)
    ctx = ctx_lengths.to(input_ids.device).view(B, 1)
    valid = valid_lengths(input_ids, attention_mask, padding_token_id).view(B, 1)
    return (pos >= ctx - 1) & (pos <= valid - 2)


def shifted_targets(input_ids: torch.Tensor, padding_token_id: int = 0) -> torch.Tensor:
    """targets[:, t] = input_ids[:, t + 1]; the last column is padding (never selected by the mask)."""
    pad = input_ids.new_full((input_ids.shape[0], 1), padding_token_id)
    return torch.cat([input_ids[:, 1:], pad], dim=1)


def completion_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    padding_token_id: int = 0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy over the masked positions.

    ``logits`` is either full [B, T, V] or already sliced [M, V] (the model's physical slicing
    with the same ``mask``). Targets are selected with the same mask; a count mismatch means
    logits and targets are misaligned and raises RuntimeError.
    """
    targets = shifted_targets(input_ids, padding_token_id)[mask]
    if logits.dim() == 3:
        logits = logits[mask]
    if logits.shape[0] != targets.shape[0]:
        raise RuntimeError(
            f"completion loss: {logits.shape[0]} logits rows but {targets.shape[0]} targets; "
            "logits and targets must be selected with the same mask"
        )
    return F.cross_entropy(logits.float(), targets, reduction=reduction)

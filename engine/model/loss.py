"""Completion-only loss with ONE boolean mask for logits and targets (the alignment rule).

Position t predicts token t + 1. For a row with context length c and v valid (non-padding)
tokens, the completion positions are t in [c - 1, v - 2]: position c - 1 predicts the first
completion token, and no position at or after padding is used.
"""
from __future__ import annotations

import os

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


# ---------------------------------------------------------------------------------------------
# the head and the loss in one pass: never a [rows, vocab] tensor beyond one chunk

CHUNK_ELEMENTS = 1 << 25  # logits per chunk (128 MB in fp32) ...
MIN_CHUNK_ROWS = 2048  # ... but never fewer rows than this: thin products waste a large GPU
L2WRAP_FACTOR = 1e-4  # the reference's L2Wrap: extra gradient 1e-4 * max_logit at each row's argmax


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``h @ weight.T`` against ``targets``, computed a chunk of rows at a
    time. In training the gradients with respect to ``h`` and ``weight`` are formed in the same
    pass (for a unit incoming gradient) and only they are kept for backward, which scales them:
    the [rows, vocab] logits, their fp32 copy and their gradient never exist at once. Matrix
    products run in ``compute_dtype`` (the autocast dtype in training) with fp32 softmax
    statistics, as the plain autocast path does; the weight gradient accumulates in fp32."""

    @staticmethod
    def forward(ctx, h, weight, targets, compute_dtype, l2wrap, chunk_rows):
        want_dh, want_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.to(compute_dtype)
        rows = h.shape[0]
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        dh = torch.empty(h.shape, dtype=compute_dtype, device=h.device) if want_dh else None
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if want_dw else None
        for start in range(0, rows, chunk_rows):
            hc = h[start:start + chunk_rows].to(compute_dtype)
            tc = targets[start:start + chunk_rows].unsqueeze(1)
            logits = torch.mm(hc, w.t()).float()
            lse = torch.logsumexp(logits, dim=1, keepdim=True)
            loss += (lse - logits.gather(1, tc)).sum()
            if not (want_dh or want_dw):
                continue
            if l2wrap:
                top, top_ids = logits.max(dim=1, keepdim=True)
            grad = logits.sub_(lse).exp_()  # softmax, in place of the logits
            grad.scatter_add_(1, tc, grad.new_full(tc.shape, -1.0))
            if l2wrap:
                grad.scatter_add_(1, top_ids, top * L2WRAP_FACTOR)
            grad = grad.to(compute_dtype)
            if want_dh:
                torch.mm(grad, w, out=dh[start:start + chunk_rows])
            if want_dw:
                dw += torch.mm(grad.t(), hc).float()
        ctx.save_for_backward(dh, dw)
        ctx.dtypes = (h.dtype, weight.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        dh, dw = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        grad_h = (dh * grad_loss).to(h_dtype) if dh is not None else None
        grad_w = (dw * grad_loss).to(w_dtype) if dw is not None else None
        return grad_h, grad_w, None, None, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, l2wrap: bool = False,
                         chunk_rows: int | None = None) -> torch.Tensor:
    """sum over rows of cross_entropy(h @ weight.T, targets), h [M, C], weight [V, C], targets [M].

    The same value and gradients as ``F.cross_entropy((h @ weight.T).float(), targets,
    reduction="sum")`` (plus the L2Wrap term with ``l2wrap``), in memory that does not grow with
    M x V. Under autocast the products run in the autocast dtype, as ``nn.Linear`` would.
    """
    if h.dim() != 2 or targets.shape != h.shape[:1]:
        raise ValueError(f"linear_cross_entropy wants h [M, C] and targets [M], got {tuple(h.shape)} and {tuple(targets.shape)}")
    device_type = h.device.type
    compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else h.dtype
    if chunk_rows is None:
        # PIANOMUSE_HEAD_CHUNK_ROWS overrides, for benchmarks
        chunk_rows = int(os.environ.get("PIANOMUSE_HEAD_CHUNK_ROWS", 0)) or max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // weight.shape[0])
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(h, weight, targets, compute_dtype, l2wrap, chunk_rows)

"""What one training forward computes: the summed cross-entropy of the selected positions.

Both objectives slice hidden states BEFORE the head (the original's "physical slicing"), so the
vocabulary projection runs only where a loss is taken:
- completion windows: the positions ``engine.model.loss.completion_mask`` selects (position
  ctx_len-1 predicts the first completion token; nothing at or after padding);
- packed LM chunks: every position except each document's last (it would predict the next
  document's first token across a boundary).
The loss is returned as a SUM; the trainer divides by the number of target tokens in the whole
global batch, so gradient accumulation, truncated BPTT and data parallelism all give the gradient
of one mean over that batch.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from engine.model.loss import completion_loss, linear_cross_entropy, shifted_targets


class L2Wrap(torch.autograd.Function):
    """Identity on the loss; in backward adds 1e-4 * (loss gradient) * max_logit at each row's argmax.

    This is the reference's "L2Wrap" (spec section 7). It wraps the SUMMED loss, which the trainer
    scales by 1/M (M target rows in the global batch), so the incoming gradient is 1/M and the
    extra term is the reference's 1e-4/(B T) * max_logit.
    """

    @staticmethod
    def forward(ctx, loss, logits):
        ctx.save_for_backward(logits)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (logits,) = ctx.saved_tensors
        top, ids = torch.max(logits, dim=-1, keepdim=True)
        extra = torch.zeros_like(logits).scatter_(-1, ids, top * (1e-4 * grad_output))
        return grad_output, extra


class TrainingObjective(nn.Module):
    """Wraps the model so DDP sees one forward per chunk: (loss sum, carried state)."""

    def __init__(self, model: nn.Module, l2wrap: bool = False, fused_head: bool | None = None):
        super().__init__()
        self.model = model
        self.l2wrap = l2wrap
        # the head and the loss in one chunked pass (engine.model.loss.linear_cross_entropy):
        # None = on CUDA, where the [rows, vocab] logits are the largest activation; the CPU keeps
        # the plain path
        self.fused_head = fused_head

    def forward(self, input_ids, loss_mask, target_ids, cu_seqlens=None, state=None, want_state=False):
        """``loss_mask`` [B, T] selects positions; ``target_ids`` [B, T+1] holds the inputs plus
        the token after the chunk (so position t's target is target_ids[:, t+1])."""
        h, new_state = self.model.hidden(input_ids, state=state, cu_seqlens=cu_seqlens, return_state=want_state)
        mask = F.pad(loss_mask, (0, 1), value=False)
        fused = self.fused_head if self.fused_head is not None else h.device.type == "cuda"
        if fused:
            targets = shifted_targets(target_ids)[mask]
            loss_sum = linear_cross_entropy(h[loss_mask], self.model.head.weight, targets,
                                            l2wrap=self.l2wrap and self.training)
            return loss_sum, new_state
        logits = self.model.head(h[loss_mask])
        loss_sum = completion_loss(logits, target_ids, mask, reduction="sum")
        if self.l2wrap and self.training:
            loss_sum = L2Wrap.apply(loss_sum, logits)
        return loss_sum, new_state


def _checkpointed_block_forward(block: nn.Module, *args):
    return checkpoint(type(block).forward, block, *args, use_reentrant=False)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward instead of storing them (per-block).

    Only the instance's ``forward`` is replaced, so parameter names (the checkpoint format) stay.
    """
    for block in model.blocks:
        block.forward = functools.partial(_checkpointed_block_forward, block)


def lm_loss_mask(input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
    """Packed LM chunks: every position predicts the next one, except each document's last."""
    mask = torch.ones_like(input_ids, dtype=torch.bool)
    if cu_seqlens is None:
        mask[:, -1] = False
    else:
        mask[0, cu_seqlens[1:] - 1] = False
    return mask

"""The RWKV-7 / "v8" block math as functions of a layer's weights (docs/rwkv7-spec.md sections 1-3).

One implementation serves both modes: parallel ("GPT") mode passes the live parameters (views, so
autograd flows) and [B, T, C] activations; recurrent ("RNN") mode passes a cached copy laid out
for matrix-vector products and [B, C] activations. The token mixes, projections, decay, value
residual, GroupNorm, bonus term and ChannelMix are these functions; only the WKV recurrence
differs (engine.kernels.wkv7: ``wkv7`` for sequences, ``wkv7_step`` for one token).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LN_X_EPS = 64e-5  # the reference's GroupNorm eps (not LayerNorm's 1e-5)
LN_EPS = 1e-5


# ---------------------------------------------------------------------------------------------
# token shift: the previous token's LN output of the same layer


def shift_plan(cu_seqlens: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For a packed row of T tokens: (starts [1, T, 1] bool, doc [T] long).

    ``starts`` marks each document's first position and ``doc`` gives the document that holds
    each position (empty documents hold none). Computed once per forward and shared by every
    layer; no host sync and no data-dependent shapes, so the shift compiles into one graph.
    """
    pos = torch.arange(T, device=cu_seqlens.device)
    doc = torch.searchsorted(cu_seqlens[1:].contiguous(), pos, right=True)
    starts = pos == cu_seqlens[doc.clamp(max=cu_seqlens.numel() - 1)]
    return starts.view(1, T, 1), doc


def token_shift(x: torch.Tensor, prev: torch.Tensor | None, cu_seqlens: torch.Tensor | None = None,
                plan: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """x [B, T, C] -> x[t-1] per position; position 0 (and every packed sequence start) gets ``prev``.

    ``prev`` is [B, C] (or [n_seqs, C] with ``cu_seqlens``) or None for zeros. ``plan`` is
    ``shift_plan(cu_seqlens, T)`` when the caller has it already.
    """
    B, T, C = x.shape
    if cu_seqlens is None and plan is None:
        first = prev.to(x.dtype).unsqueeze(1) if prev is not None else x.new_zeros(B, 1, C)
        return torch.cat([first, x[:, :-1]], dim=1)
    starts, doc = plan if plan is not None else shift_plan(cu_seqlens, T)
    shifted = F.pad(x[:, :-1], (0, 0, 1, 0))
    if prev is None:
        # a packed sequence start must not see the previous document's last token
        return shifted.masked_fill(starts, 0.0)
    return torch.where(starts, prev.to(x.dtype)[doc].unsqueeze(0), shifted)


def last_token(x: torch.Tensor, prev: torch.Tensor | None, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """The shift state after ``x``: each sequence's last row (its ``prev`` if it was empty)."""
    B, T, C = x.shape
    if cu_seqlens is None:
        if T > 0:
            return x[:, -1]
        return prev.to(x.dtype) if prev is not None else x.new_zeros(B, C)
    n = cu_seqlens.numel() - 1
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    last = x[0, (cu_seqlens[1:] - 1).clamp(min=0)]
    fallback = prev.to(x.dtype) if prev is not None else x.new_zeros(n, C)
    return torch.where((lengths > 0).unsqueeze(1), last, fallback)



# ---------------------------------------------------------------------------------------------
# the block math, as functions of a layer's weights. Parallel mode passes the live parameters
# (views, so autograd flows); recurrent mode passes a cached copy laid out for matrix-vector
# products (pre-transposed contiguous matrices, flat vectors). Same functions, same numbers.


@dataclass(slots=True)
class TimeMixWeights:
    mix: torch.Tensor  # [6, C]: mu for r, k, v, a, g, w in that order
    RKV: torch.Tensor  # [3, C, C]: receptance, key, value, applied as x @ W (transposed Linear weights)
    w0: torch.Tensor  # [C]
    w1: torch.Tensor  # [C, Dw]
    w2: torch.Tensor  # [Dw, C]
    a0: torch.Tensor
    a1: torch.Tensor
    a2: torch.Tensor
    v0: torch.Tensor
    v1: torch.Tensor
    v2: torch.Tensor
    g1: torch.Tensor
    g2: torch.Tensor
    k_k: torch.Tensor  # [C]
    k_a: torch.Tensor  # [C]
    one_minus_k_a: torch.Tensor  # [C]
    r_k: torch.Tensor  # [C] (the [H, N] parameter, flat)
    O: torch.Tensor  # [C, C]
    ln_w: torch.Tensor
    ln_b: torch.Tensor


@dataclass(slots=True)
class ChannelMixWeights:
    x_k: torch.Tensor  # [C]
    K: torch.Tensor  # [C, 4C]
    V: torch.Tensor  # [4C, C]
    enn: torch.Tensor | None  # [Vocab, C] ("v8" only)


@dataclass(slots=True)
class BlockWeights:
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    att: TimeMixWeights
    ffn: ChannelMixWeights


def _as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # a Python-level check, so a traced RNN step records no conversion op when none is needed
    return t if t.dtype == dtype else t.to(dtype)


def layer_norm(x, w, b):
    return torch.layer_norm(x, (x.shape[-1],), w, b, LN_EPS)


def time_mix_project(W: TimeMixWeights, x, x_prev, v_first, layer_id: int, H: int, N: int):
    """Everything before the recurrence. x, x_prev [..., C]: LN1 output and its token shift.

    Returns (r, z, k, v, kappa_hat, b, g, v_first), all [..., C], where the kernel arguments are
    a = -kappa_hat and b = kappa_hat * iclr; z (decay pre-activation) is fp32.
    """
    shape = x.shape
    C = shape[-1]
    # the six token-shift mixes in one op: [6, ..., C], rows r, k, v, a, g, w (each contiguous)
    mixed = torch.addcmul(x, x_prev - x, W.mix.view((6,) + (1,) * (x.dim() - 1) + (C,)))
    # receptance, key and value in one batched product
    r, k, v = torch.matmul(mixed[:3].view(3, -1, C), W.RKV).view((3,) + shape).unbind(0)
    _, _, xv, xa, xg, xw = mixed.unbind(0)
    # the decay sits close to 1 and is compounded over many steps: keep it in fp32
    z = _as_dtype(W.w0 + torch.tanh(xw @ W.w1) @ W.w2, torch.float32)
    iclr = torch.sigmoid(W.a0 + (xa @ W.a1) @ W.a2)  # in-context learning rate a
    g = torch.sigmoid(xg @ W.g1) @ W.g2
    kk = (k * W.k_k).view(shape[:-1] + (H, N))
    kappa = (kk / torch.linalg.vector_norm(kk, dim=-1, keepdim=True).clamp_min(1e-12)).view(shape)
    k = k * torch.addcmul(W.one_minus_k_a, iclr, W.k_a)  # k * (1 + (a - 1) * k_a)
    if layer_id == 0:
        v_first = v
    else:
        # under autocast the gate comes out fp32 while v is bf16; lerp needs one dtype
        v = torch.lerp(v, v_first, _as_dtype(torch.sigmoid(W.v0 + (xv @ W.v1) @ W.v2), v.dtype))
    return r, z, k, v, kappa, kappa * iclr, g, v_first


def time_mix_finish(W: TimeMixWeights, y, r, k, v, g, H: int, N: int):
    """Everything after the recurrence: GroupNorm per head, bonus term, gate, output projection."""
    shape = y.shape
    heads = shape[:-1] + (H, N)
    y = torch.group_norm(y.reshape(-1, shape[-1]), H, W.ln_w, W.ln_b, LN_X_EPS).view(heads)
    # bonus: y_h += (sum_j r_hj k_hj r_k[h, j]) v_h
    bonus_weight = (r * k * W.r_k).view(heads).sum(dim=-1, keepdim=True)
    return (torch.addcmul(y, bonus_weight, v.view(heads)).view(shape) * g) @ W.O


def relu_square_mlp(k, K, V):
    """relu(k @ K)^2 @ V: the ChannelMix's two products and its activation."""
    return torch.relu(k @ K).square() @ V


class _ReluSquareMLP(torch.autograd.Function):
    """``relu_square_mlp`` for training that keeps only its inputs for backward and recomputes
    k @ K there: the two [tokens, 4C] activations (the largest a block has) are never stored,
    for one more [tokens, C] x [C, 4C] product in backward."""

    @staticmethod
    def forward(ctx, k, K, V):
        ctx.save_for_backward(k, K, V)
        return relu_square_mlp(k, K, V)

    @staticmethod
    def backward(ctx, grad_out):
        k, K, V = ctx.saved_tensors
        k2, g2 = k.reshape(-1, k.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1])
        r = torch.relu(k2 @ K)
        grad_V = r.square().t() @ g2 if ctx.needs_input_grad[2] else None
        grad_h = (g2 @ V.t()) * (2 * r)
        grad_k = (grad_h @ K.t()).view(k.shape) if ctx.needs_input_grad[0] else None
        grad_K = k2.t() @ grad_h if ctx.needs_input_grad[1] else None
        return grad_k, grad_K, grad_V


def channel_mix(W: ChannelMixWeights, x, x_prev, idx):
    """ChannelMix: W_v relu(W_k mix(x))^2, times the token's DeepEmbed row for "v8"."""
    k = torch.addcmul(x, x_prev - x, W.x_k)
    if torch.is_grad_enabled() and (k.requires_grad or W.K.requires_grad or W.V.requires_grad):
        out = _ReluSquareMLP.apply(k, W.K, W.V)
    else:
        out = relu_square_mlp(k, W.K, W.V)
    if W.enn is not None:
        out = out * F.embedding(idx, W.enn)
    return out


def block_time_mix_in(W: BlockWeights, x, att_prev, v_first, plan, first_layer: bool, H: int, N: int):
    """A block up to the WKV operator: LN1, token shift, TimeMix projections.

    Returns (LN1 output, r, z, k, v, a, b, g, v_first) with the kernel's a = -kappa_hat.
    """
    xa = layer_norm(x, W.ln1_w, W.ln1_b)
    xs = token_shift(xa, att_prev, None, plan)
    r, z, k, v, kappa, b, g, v_first = time_mix_project(W.att, xa, xs, v_first, 0 if first_layer else 1, H, N)
    return xa, r, z, k, v, -kappa, b, g, v_first


def block_finish(W: BlockWeights, x, y, r, k, v, g, idx, ffn_prev, plan, H: int, N: int):
    """A block after the WKV operator: TimeMix output, residual, LN2, ChannelMix, residual.

    Returns (the block's output, LN2 output).
    """
    x = x + time_mix_finish(W.att, y.to(x.dtype), r, k, v, g, H, N)
    xf = layer_norm(x, W.ln2_w, W.ln2_b)
    x = x + channel_mix(W.ffn, xf, token_shift(xf, ffn_prev, None, plan), idx)
    return x, xf


_COMPILED_PARTS: tuple | None = None


def _compiled_parts():
    """torch.compile'd ``block_time_mix_in`` and ``block_finish``, made once per process.

    They are free functions of tensors, so one compiled graph serves every layer of a shape
    (layer 0, which defines v_first, gets its own). The WKV operator stays outside the graphs.
    """
    global _COMPILED_PARTS
    if _COMPILED_PARTS is None:
        _COMPILED_PARTS = (torch.compile(block_time_mix_in), torch.compile(block_finish))
    return _COMPILED_PARTS


def _cast_weights(W: BlockWeights, dtype: torch.dtype) -> BlockWeights:
    """Every weight tensor of ``W`` in ``dtype``, except the decay's ``w0`` (kept fp32)."""
    for part in (W, W.att, W.ffn):
        for name in type(part).__slots__:
            t = getattr(part, name)
            if isinstance(t, torch.Tensor) and name != "w0":
                setattr(part, name, _as_dtype(t, dtype))
    return W

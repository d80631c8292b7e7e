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


# the four low-rank ("LoRA") projections, stacked in the order their token-shift inputs have in
# ``mix`` rows 2..5: value residual (v), in-context learning rate (a), output gate (g), decay (w)
LOW_RANK_ORDER = ("v", "a", "g", "w")


@dataclass(slots=True)
class TimeMixWeights:
    mix: torch.Tensor  # [6, C]: mu for r, k, v, a, g, w in that order
    RKV: torch.Tensor  # [3, C, C]: receptance, key, value, applied as x @ W (transposed Linear weights)
    # [C], kept fp32 (the decay pre-activation is formed in fp32); None in the RNN cache, whose
    # weights share one dtype: there w0 is lora_bias's w row and the up-projection adds it
    w0: torch.Tensor | None
    # v1, a1, g1, w1 as [4, C, R] and v2, a2, g2, w2 as [4, R, C], zero-padded to the largest rank R
    # (the padding adds exact zeros): each set is one batched product. Layer 0 holds zeros for v
    # (it defines v_first; its v0/v1/v2 stay out of the graph, as in the official model).
    lora_down: torch.Tensor
    lora_up: torch.Tensor
    lora_bias: torch.Tensor  # [4, 1, C]: v0, a0, 0 and w0 or 0, added by the up-projection
    k_k: torch.Tensor  # [C]
    k_a: torch.Tensor  # [C]
    one_minus_k_a: torch.Tensor  # [C]
    r_k: torch.Tensor  # [H, N, 1] (the [H, N] parameter, one column per head)
    O: torch.Tensor  # [C, C]
    ln_w: torch.Tensor
    ln_b: torch.Tensor
    lora_ranks: tuple[int, int, int, int] = (0, 0, 0, 0)  # the unpadded ranks, in LOW_RANK_ORDER


def stack_low_rank(downs, ups, biases):
    """(lora_down, lora_up, lora_bias) from per-projection [C, D] / [D, C] matrices and [C] biases
    (None for no bias), in LOW_RANK_ORDER. Views of parameters stay in the autograd graph."""
    R = max(d.shape[-1] for d in downs)
    down = torch.stack([F.pad(d, (0, R - d.shape[-1])) if d.shape[-1] < R else d for d in downs])
    up = torch.stack([F.pad(u, (0, 0, 0, R - u.shape[0])) if u.shape[0] < R else u for u in ups])
    ref = next(b for b in biases if b is not None)
    bias = torch.stack([b if b is not None else torch.zeros_like(ref) for b in biases]).unsqueeze(1)
    return down, up, bias


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


def _low_rank_activations(low: torch.Tensor) -> torch.Tensor:
    """The down-projections' activations, rows v, a, g, w: none, none, sigmoid, tanh. Without
    autograd in place (two ops, no copy); with it out of place (autograd allows one in-place op
    per tensor whose result a backward needs, not two on views of one base)."""
    if low.requires_grad and torch.is_grad_enabled():
        return torch.cat((low[:2], torch.sigmoid(low[2:3]), torch.tanh(low[3:])))
    low[2].sigmoid_()
    low[3].tanh_()
    return low


def token_mixes(x, x_prev, mix):
    """The token-shift mixes x + mu_k (x_prev - x) for each row of ``mix`` [K, C], in one op:
    [K, rows, C] (TimeMix: K = 6, rows r, k, v, a, g, w)."""
    C, K = x.shape[-1], mix.shape[0]
    return torch.lerp(x, x_prev, mix.view((K,) + (1,) * (x.dim() - 1) + (C,))).view(K, -1, C)


def time_mix_products(W: TimeMixWeights, x, x_prev):
    """The TimeMix's products over x, x_prev [..., C]: (rkv [3, rows, C]: receptance, key, value;
    up [4, rows, C]: the low-rank up-projections with their biases, rows value gate, in-context
    rate, output gate, decay z), before any element-wise work on them."""
    return time_mix_products_of(W, token_mixes(x, x_prev, W.mix))


def time_mix_products_of(W: TimeMixWeights, mixed, activations=None):
    """``time_mix_products`` from the six mixes [6, rows, C]; ``activations`` applies the
    low-rank activations (default ``_low_rank_activations``; the fused step passes its kernel)."""
    rkv = torch.bmm(mixed[:3], W.RKV)
    # low rank, rows v, a, g, w (mix rows 2..5): xv @ v1, xa @ a1, sigmoid(xg @ g1), tanh(xw @ w1)
    low = (activations or _low_rank_activations)(torch.bmm(mixed[2:], W.lora_down))
    # ... then @ v2, a2, g2, w2 plus v0, a0 (v and a rows) in one product
    return rkv, torch.baddbmm(W.lora_bias, low, W.lora_up)


def time_mix_project(W: TimeMixWeights, x, x_prev, v_first, layer_id: int, H: int, N: int):
    """Everything before the recurrence. x, x_prev [..., C]: LN1 output and its token shift.

    Returns (r, z, k, v, kappa_hat, b, g, v_first), all [..., C], where the kernel arguments are
    a = -kappa_hat and b = kappa_hat * iclr; z (decay pre-activation) is fp32.

    Few, batched ops (at one token each op is a kernel launch, which is what a GPU step costs):
    the six token-shift mixes are one lerp, r/k/v one batched product, the four low-rank
    projections two more (down, activations in place, up with its biases) and their two
    sigmoid gates one op.
    """
    shape = x.shape
    rkv, up = time_mix_products(W, x, x_prev)
    r, k, v = rkv.view((3,) + shape).unbind(0)
    # the decay sits close to 1 and is compounded over many steps: keep it in fp32
    z = _as_dtype(up[3].view(shape) if W.w0 is None else W.w0 + up[3].view(shape), torch.float32)
    g = up[2].view(shape)
    vgate, iclr = torch.sigmoid(up[:2]).view((2,) + shape).unbind(0)  # value residual gate, in-context learning rate a
    kk = (k * W.k_k).view(shape[:-1] + (H, N))
    kappa = (kk / torch.linalg.vector_norm(kk, dim=-1, keepdim=True).clamp_min(1e-12)).view(shape)
    k = k * torch.addcmul(W.one_minus_k_a, iclr, W.k_a)  # k * (1 + (a - 1) * k_a)
    if layer_id == 0:
        v_first = v
    else:
        # under autocast the gate comes out fp32 while v is bf16; lerp needs one dtype
        v = torch.lerp(v, v_first, _as_dtype(vgate, v.dtype))
    return r, z, k, v, kappa, kappa * iclr, g, v_first


def time_mix_finish(W: TimeMixWeights, x, y, r, k, v, g, H: int, N: int):
    """Everything after the recurrence: GroupNorm per head, bonus term, gate, output projection,
    added to the residual stream ``x`` (one addmm)."""
    shape = y.shape
    C = shape[-1]
    rows = y.numel() // C
    y = torch.group_norm(y.reshape(rows, C), H, W.ln_w, W.ln_b, LN_X_EPS).view(rows, H, N)
    # bonus: y_h += (sum_j r_hj k_hj r_k[h, j]) v_h, the per-head sums as one [H] batch of products
    bonus_weight = torch.bmm((r * k).view(rows, H, N).transpose(0, 1), W.r_k).transpose(0, 1)
    gated = torch.addcmul(y, bonus_weight, v.reshape(rows, H, N)).view(rows, C) * g.reshape(rows, C)
    return time_mix_output(W, x, gated)


def time_mix_output(W: TimeMixWeights, x, gated):
    """The residual stream ``x`` plus the output projection of the gated TimeMix output (one addmm)."""
    C = x.shape[-1]
    return torch.addmm(x.reshape(-1, C), gated.reshape(-1, C), W.O).view(x.shape)


def block_step_fused(W: BlockWeights, x, scale, v_first, att_prev, S, ffn_prev, H: int, N: int, S_out=None):
    """Recurrent mode's block on x [B, C] with the element-wise work as Triton kernels
    (engine.kernels.rnn_triton; CUDA): LN1 + the six token-shift mixes as one kernel, the
    low-rank activations as one, everything between the TimeMix's products and its output
    projection (decay, kappa, value mix, WKV update and read-out, GroupNorm, bonus, gate) as one,
    LN2 + the ChannelMix mix as one and its relu^2 as one. The same math as ``Block.step``'s
    PyTorch path (the products are these functions'); ``v_first`` is None in layer 0.
    Returns (x, v_first, LN1 output, new S, LN2 output)."""
    from engine.kernels import rnn_triton as fused

    xa, mixed = fused.layer_norm_mix(x, att_prev, W.ln1_w, W.ln1_b, W.att.mix, LN_EPS)
    rkv, up = time_mix_products_of(W.att, mixed, fused.low_rank_activations)
    gated, S = fused.time_mix_tail(rkv, up, v_first, S, W.att, H, N, LN_X_EPS, S_out)
    x = time_mix_output(W.att, x, gated)
    xf, k = fused.layer_norm_mix(x, ffn_prev, W.ln2_w, W.ln2_b, W.ffn.x_k.view(1, -1), LN_EPS)
    x = channel_mix_of(W.ffn, x, k[0], scale, fused.relu_square)
    return x, rkv[2] if v_first is None else v_first, xa, S, xf


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


def deep_embed_rows(W: ChannelMixWeights, idx):
    """The tokens' DeepEmbed rows ("v8"), or None (x070)."""
    return F.embedding(idx, W.enn) if W.enn is not None else None


def channel_mix(W: ChannelMixWeights, residual, x, x_prev, scale):
    """``residual`` + ChannelMix: W_v relu(W_k mix(x))^2, times the token's DeepEmbed row
    ``scale`` for "v8" (None for x070); the residual add is fused into the last op."""
    return channel_mix_of(W, residual, torch.lerp(x, x_prev, W.x_k), scale)


def channel_mix_of(W: ChannelMixWeights, residual, k, scale, relu_square=None):
    """``channel_mix`` from its token-shift mix ``k``; ``relu_square`` (in place, without
    autograd) replaces relu(.)^2 where given (the fused step's kernel)."""
    if torch.is_grad_enabled() and (k.requires_grad or W.K.requires_grad or W.V.requires_grad):
        out = _ReluSquareMLP.apply(k, W.K, W.V)
    elif relu_square is not None or scale is None:
        C = k.shape[-1]
        hidden = relu_square(k @ W.K) if relu_square is not None else torch.relu(k @ W.K).square()
        hidden = hidden.view(-1, hidden.shape[-1])
        if scale is None:
            return torch.addmm(residual.reshape(-1, C), hidden, W.V).view(residual.shape)
        out = (hidden @ W.V).view(residual.shape)
    else:
        out = relu_square_mlp(k, W.K, W.V)
    if scale is None:
        return residual + out
    return torch.addcmul(residual, out, scale)


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
    x = time_mix_finish(W.att, x, y.to(x.dtype), r, k, v, g, H, N)
    xf = layer_norm(x, W.ln2_w, W.ln2_b)
    x = channel_mix(W.ffn, x, xf, token_shift(xf, ffn_prev, None, plan), deep_embed_rows(W.ffn, idx))
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

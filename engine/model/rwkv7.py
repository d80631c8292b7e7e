"""The RWKV-7 ("x070") and "v8" ("x080", x070 + DeepEmbed) model, in parallel and recurrent mode.

One implementation of the block math (docs/rwkv7-spec.md sections 1-3) serves both modes: the
token mixes, projections, decay, value residual, GroupNorm, bonus term and ChannelMix are the
same functions; only the WKV recurrence differs. Parallel ("GPT") mode hands [B, T, H, N] tensors
to the WKV7 operator (engine.kernels.wkv7, chunk-wise on CPU); recurrent ("RNN") mode runs the
same functions on one token per sequence ([B, C]) and updates the fp32 state in O(H N^2).

Module and parameter names are the official checkpoint keys (spec section 5), so
``state_dict()`` is an official RWKV-7 state_dict.
"""
from __future__ import annotations

import math
import operator
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.kernels.wkv7 import wkv7

from . import cpu_ext
from .config import ModelConfig, check_head_size_env
from .state import RWKVState

DECAY_SCALE = math.exp(-0.5)  # d = exp(-e^{-1/2} sigmoid(z)) keeps every decay in (0.545, 1)
LN_X_EPS = 64e-5  # the reference's GroupNorm eps (not LayerNorm's 1e-5)
LN_EPS = 1e-5
_VERSION = operator.attrgetter("_version")  # bumped by every in-place update of a tensor


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
# the recurrence: one step (RNN mode); the sequence version is engine.kernels.wkv7


def wkv7_step(S, r, w, k, v, kappa, b, H: int, N: int, out: torch.Tensor | None = None):
    """One WKV7 step for all heads. S [B, H, N, N] fp32; r, w (pre-activation z), k, v, kappa, b [B, C].

    With the kernel's a = -kappa: S <- S diag(d) + (S a) b^T + v k^T and y = S r, forming the
    rank-1 term from the matrix-vector product S a (O(N^2), never the N x N outer product first).
    The new S goes to ``out`` ([B, H, N, N], not S itself) when given, else to a new tensor.
    Returns y [B, C] fp32 and the new S.
    """
    B = S.shape[0]
    if r.dtype != torch.float32:
        r, k, v, kappa, b = (t.float() for t in (r, k, v, kappa, b))
    BH = B * H
    d = torch.exp(torch.sigmoid(w) * -DECAY_SCALE)
    S = S.view(BH, N, N)
    s_kappa = torch.bmm(S, kappa.view(BH, N, 1))
    S_new = torch.mul(S, d.view(BH, 1, N), out=out.view(BH, N, N) if out is not None else None)
    S_new.baddbmm_(s_kappa, b.view(BH, 1, N), alpha=-1.0).baddbmm_(v.view(BH, N, 1), k.view(BH, 1, N))
    y = torch.bmm(S_new, r.view(BH, N, 1))
    return y.view(B, H * N), S_new.view(B, H, N, N)


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


# ---------------------------------------------------------------------------------------------
# the layers: parameters under their official names


class TimeMix(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        C, H, N = config.n_embd, config.n_head, config.head_size

        def vec():
            return nn.Parameter(torch.empty(1, 1, C))

        self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g = (vec() for _ in range(6))
        self.w0, self.w1, self.w2 = vec(), nn.Parameter(torch.empty(C, config.dim_w)), nn.Parameter(torch.empty(config.dim_w, C))
        self.a0, self.a1, self.a2 = vec(), nn.Parameter(torch.empty(C, config.dim_a)), nn.Parameter(torch.empty(config.dim_a, C))
        # layer 0's v0/v1/v2 are unused (it defines v_first) but kept: released checkpoints carry them
        self.v0, self.v1, self.v2 = vec(), nn.Parameter(torch.empty(C, config.dim_v)), nn.Parameter(torch.empty(config.dim_v, C))
        self.g1, self.g2 = nn.Parameter(torch.empty(C, config.dim_g)), nn.Parameter(torch.empty(config.dim_g, C))
        self.k_k, self.k_a = vec(), vec()
        self.r_k = nn.Parameter(torch.empty(H, N))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=LN_X_EPS)

    def weights(self, packed: bool = False) -> TimeMixWeights:
        """The parameters as the math functions take them.

        Parallel mode (``packed=False``) gets views and small stacks that autograd flows
        through; RNN mode (``packed=True``) gets contiguous copies laid out for [B, C] inputs.
        """
        C = self.x_r.shape[-1]
        mix = torch.cat([self.x_r, self.x_k, self.x_v, self.x_a, self.x_g, self.x_w]).view(6, C)
        RKV = torch.stack([self.receptance.weight.t(), self.key.weight.t(), self.value.weight.t()])
        k_a = self.k_a.reshape(C)
        W = TimeMixWeights(
            mix=mix, RKV=RKV,
            w0=self.w0.reshape(C), w1=self.w1, w2=self.w2,
            a0=self.a0.reshape(C), a1=self.a1, a2=self.a2,
            v0=self.v0.reshape(C), v1=self.v1, v2=self.v2,
            g1=self.g1, g2=self.g2,
            k_k=self.k_k.reshape(C), k_a=k_a, one_minus_k_a=1 - k_a, r_k=self.r_k.reshape(C),
            O=self.output.weight.t(), ln_w=self.ln_x.weight, ln_b=self.ln_x.bias,
        )  # fmt: skip
        if packed:
            for name in TimeMixWeights.__slots__:
                setattr(W, name, getattr(W, name).contiguous().clone())
        return W


class ChannelMix(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        C = config.n_embd
        self.x_k = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, 4 * C, bias=False)
        self.value = nn.Linear(4 * C, C, bias=False)
        # "v8" DeepEmbed: a per-layer, per-token scale on the ChannelMix output
        self.enn = nn.Embedding(config.vocab_size, C) if config.deep_embed else None

    def weights(self, packed: bool = False) -> ChannelMixWeights:
        copy = (lambda t: t.contiguous().clone()) if packed else (lambda t: t)
        return ChannelMixWeights(
            x_k=copy(self.x_k.reshape(-1)),
            K=copy(self.key.weight.t()),
            V=copy(self.value.weight.t()),
            enn=(self.enn.weight.detach() if packed else self.enn.weight) if self.enn is not None else None,
        )


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        C = config.n_embd
        self.layer_id = layer_id
        self.n_head, self.head_size = config.n_head, config.head_size
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C)
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        self.att = TimeMix(config, layer_id)
        self.ffn = ChannelMix(config, layer_id)
        self.compiled = False  # RWKV7.compile_blocks(): the parts around the WKV operator through torch.compile
        self.wkv_recompute = False  # RWKV7.set_wkv_recompute(): the WKV operator saves only its inputs

    def weights(self, packed: bool = False, dtype: torch.dtype | None = None) -> BlockWeights:
        """The block's parameters as the math functions take them.

        ``dtype`` casts them for a reduced-precision forward (autograd flows through the casts
        to the fp32 masters), all but ``att.w0``: the decay pre-activation stays fp32.
        """
        ln = (self.ln1.weight, self.ln1.bias, self.ln2.weight, self.ln2.bias)
        if packed:  # the RNN cache holds no autograd leaves (a traced step takes them as constants)
            ln = tuple(t.detach() for t in ln)
        W = BlockWeights(*ln, self.att.weights(packed), self.ffn.weights(packed))
        if dtype is not None:
            W = _cast_weights(W, dtype)
        return W

    def forward(self, x, idx, v_first, prev, cu_seqlens=None, want_state=False, backend="auto", plan=None):
        """Parallel mode over x [B, T, C]; ``prev`` = (att_shift, wkv, ffn_shift) or Nones.

        Under autocast the block runs in the autocast dtype throughout (weights cast once, the
        residual stream and every activation in that dtype, LayerNorm/GroupNorm statistics in
        fp32 inside their kernels), rather than autocast's mix of bf16 products and fp32
        element-wise work: half the activation memory and traffic, the same functions.
        ``plan`` is ``shift_plan(cu_seqlens, T)``, shared by the layers.
        """
        if self.layer_id == 0:
            x = self.ln0(x)
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            with torch.autocast(device_type, enabled=False):
                return self._forward(x.to(dtype), idx, v_first, prev, cu_seqlens, want_state, backend, plan, dtype)
        return self._forward(x, idx, v_first, prev, cu_seqlens, want_state, backend, plan, None)

    def _forward(self, x, idx, v_first, prev, cu_seqlens, want_state, backend, plan, dtype):
        W = self.weights(dtype=dtype)
        att_prev, wkv_prev, ffn_prev = prev
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        if cu_seqlens is not None and plan is None:
            plan = shift_plan(cu_seqlens, T)
        time_mix_in, block_out = (_compiled_parts() if self.compiled else (block_time_mix_in, block_finish))
        xa, r, z, k, v, a, b, g, v_first = time_mix_in(W, x, att_prev, v_first, plan, self.layer_id == 0, H, N)
        y, wkv_state = wkv7(
            *(t.view(B, T, H, N) for t in (r, z, k, v, a, b)),
            initial_state=wkv_prev,
            output_final_state=want_state,
            cu_seqlens=cu_seqlens,
            backend=backend,
            recompute=self.wkv_recompute,
        )
        x, xf = block_out(W, x, y.view(B, T, C), r, k, v, g, idx, ffn_prev, plan, H, N)
        if not want_state:
            return x, v_first, None
        return x, v_first, (last_token(xa, att_prev, cu_seqlens), wkv_state, last_token(xf, ffn_prev, cu_seqlens))

    def step(self, W: BlockWeights, x, idx, v_first, att_prev, wkv_prev, ffn_prev, wkv_out=None):
        """Recurrent mode: the same math on x [B, C] for one token per sequence (new WKV state into ``wkv_out``)."""
        B, C = x.shape
        H, N = self.n_head, self.head_size
        xa = layer_norm(x, W.ln1_w, W.ln1_b)
        r, z, k, v, kappa, b, g, v_first = time_mix_project(W.att, xa, att_prev, v_first, self.layer_id, H, N)
        y, wkv_state = wkv7_step(wkv_prev, r, z, k, v, kappa, b, H, N, wkv_out)
        x = x + time_mix_finish(W.att, _as_dtype(y, x.dtype), r, k, v, g, H, N)
        xf = layer_norm(x, W.ln2_w, W.ln2_b)
        x = x + channel_mix(W.ffn, xf, ffn_prev, idx)
        return x, v_first, xa, wkv_state, xf


class RWKV7(nn.Module):
    """RWKV-7 / "v8" language model. ``wkv_backend`` picks the WKV7 operator for parallel mode."""

    def __init__(self, config: ModelConfig, *, init: bool = True, wkv_backend: str = "auto"):
        super().__init__()
        check_head_size_env(config.head_size)
        self.config = config
        self.wkv_backend = wkv_backend
        C, V = config.n_embd, config.vocab_size
        self.emb = nn.Embedding(V, C)
        self.blocks = nn.ModuleList(Block(config, l) for l in range(config.n_layer))
        self.ln_out = nn.LayerNorm(C)
        self.head = nn.Linear(C, V, bias=False)  # model.head(h): logits from hidden states
        self._rnn_cache = None  # (key, weights laid out for RNN mode); see _rnn_weights
        self._rnn_traces = {}  # (batch, dtypes, device) -> frozen trace of the step over that cache
        self.rnn_trace = True
        self.rnn_fused = True  # the C++ CPU step (engine.model.cpu_ext) instead of the trace, where it applies
        self._rnn_fused = None  # that step bound to the current weight cache
        # on CUDA: replay the step from a captured CUDA graph (_graphed_step); measured against the
        # traced step in bench/decode_gpu.py and checked in tests/integration/test_model_gpu.py
        self.rnn_cuda_graph = True
        # the graphed step built from a torch.compile'd step (element-wise work fused: fewer,
        # larger kernels per replay); opt-in: its first use compiles for tens of seconds
        self.rnn_compile = False
        self._param_list = None
        if init:
            from .init import init_parameters

            init_parameters(self)

    # ---- parallel mode ----------------------------------------------------------------------

    def hidden(self, idx, state: RWKVState | None = None, cu_seqlens=None, return_state: bool = True):
        """idx [B, T] -> (h [B, T, C] after ln_out, final RWKVState or None).

        ``state`` continues earlier text (chunked prefill, long-sequence training). With
        ``cu_seqlens`` (B == 1, packed documents) every document starts fresh (or from its row of
        ``state``) and the returned state has one row per document.
        """
        if idx.dim() != 2:
            raise ValueError(f"input_ids must be [batch, time], got shape {tuple(idx.shape)}")
        B, T = idx.shape
        rows = B
        if cu_seqlens is not None:
            if B != 1:
                raise ValueError("packed sequences (cu_seqlens) need batch size 1")
            cu_seqlens = torch.as_tensor(cu_seqlens, dtype=torch.long, device=idx.device)
            if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != T:
                raise ValueError(f"cu_seqlens must start at 0 and end at T={T}, got {cu_seqlens.tolist()}")
            rows = cu_seqlens.numel() - 1
        if state is not None and state.batch_size != rows:
            raise ValueError(f"state holds {state.batch_size} sequences but the input has {rows}")
        x = self.emb(idx)  # layer 0 applies ln0 (Block.forward): its parameters live with that block
        v_first = None
        layer_states = []
        plan = shift_plan(cu_seqlens, T) if cu_seqlens is not None else None
        for l, block in enumerate(self.blocks):
            prev = state.layer(l) if state is not None else (None, None, None)
            x, v_first, layer_state = block(x, idx, v_first, prev, cu_seqlens, return_state, self.wkv_backend, plan)
            layer_states.append(layer_state)
        h = self.ln_out(x)
        if not return_state:
            return h, None
        return h, RWKVState(
            torch.stack([s[0] for s in layer_states]),
            torch.stack([s[1] for s in layer_states]).float(),
            torch.stack([s[2] for s in layer_states]),
        )

    def forward(self, idx, state: RWKVState | None = None, return_state: bool = False, cu_seqlens=None):
        h, new_state = self.hidden(idx, state=state, cu_seqlens=cu_seqlens, return_state=return_state)
        logits = self.head(h)
        return (logits, new_state) if return_state else logits

    # ---- recurrent mode ---------------------------------------------------------------------

    def init_state(self, batch_size: int = 1) -> RWKVState:
        p = self.emb.weight
        return RWKVState.zeros(self.config.n_layer, batch_size, self.config.n_embd, self.config.head_size, dtype=p.dtype, device=p.device)

    def _rnn_weights(self) -> tuple[torch.Tensor, list[BlockWeights], torch.Tensor, torch.Tensor, torch.Tensor]:
        """(LN0-folded embedding, per-block weights, ln_out w, ln_out b, head as [C, V]).

        Without autograd they are a cached copy laid out for matrix-vector products; any
        in-place update of a parameter (optimizer step, load_state_dict) bumps its version and
        a move or dtype change gives new storage, so either rebuilds the cache.
        """
        ln0 = self.blocks[0].ln0
        if torch.is_grad_enabled():
            return (
                layer_norm(self.emb.weight, ln0.weight, ln0.bias),
                [b.weights() for b in self.blocks],
                self.ln_out.weight, self.ln_out.bias, self.head.weight.t(),
            )  # fmt: skip
        params = self._param_list
        if params is None:
            params = self._param_list = list(self.parameters())
        key = (sum(map(_VERSION, params)), params[0].data_ptr(), params[0].dtype, params[0].device)
        if self._rnn_cache is None or self._rnn_cache[0] != key:
            with torch.no_grad():
                pack = (
                    layer_norm(self.emb.weight, ln0.weight, ln0.bias),  # LN0 folded into the table
                    [b.weights(packed=True) for b in self.blocks],
                    self.ln_out.weight.detach(), self.ln_out.bias.detach(), self.head.weight.t().contiguous(),
                )  # fmt: skip
            self._rnn_cache = (key, pack)
            self._rnn_traces = {}
            self._rnn_fused = None
        return self._rnn_cache[1]

    def step(self, tokens, state: RWKVState):
        """RNN mode: tokens [B] -> (logits [B, V], new state). ``state`` itself is not modified.

        Without autograd (``torch.no_grad``/``inference_mode``) the step runs as a frozen
        TorchScript trace of ``_step_layers`` over the cached weights (one per batch size; set
        ``model.rnn_trace = False`` for plain eager mode): the same math, minus the Python
        dispatch that dominates a batch-1 step on CPU. On CPU in fp32 at small batch the fused
        C++ step (``engine.model.cpu_ext``, built on first use) runs instead of the trace, unless
        ``model.rnn_fused = False``, ``PIANOMUSE_CPU_EXT=0`` or ``wkv_backend="reference"``.
        """
        emb = self.emb.weight
        if torch.is_autocast_enabled(emb.device.type):
            # the step is defined over the weight cache in the weights' own dtype: autocast would
            # mix dtypes inside it (a bf16 audition of fp32 master weights), so it runs without,
            # and shift states carried over from an autocast prefill are brought to that dtype
            with torch.autocast(emb.device.type, enabled=False):
                return self.step(tokens, state.to(dtype=emb.dtype))
        pack = self._rnn_weights()
        emb = pack[0]
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=emb.device).view(-1)
        B = tokens.shape[0]
        if state.batch_size != B:
            raise ValueError(f"state holds {state.batch_size} sequences but {B} tokens were given")
        run = None
        if self.rnn_trace and not torch.is_grad_enabled():
            if emb.device.type == "cuda" and self.rnn_cuda_graph:
                run = self._graphed_step(pack, tokens, state)
            else:
                # the "reference" backend pins a model to the plain PyTorch math (the tests' oracle)
                fused = self.rnn_fused and self.wkv_backend != "reference"
                run = self._fused_cpu_step(pack, B, state) if fused else None
            if run is None:
                run = self._traced_step(pack, tokens, state)
        if run is None:
            logits, att, wkv, ffn = self._step_layers(pack, tokens, state.att_shift, state.wkv, state.ffn_shift)
        else:
            logits, att, wkv, ffn = run(tokens, state.att_shift, state.wkv, state.ffn_shift)
        return logits, RWKVState(att, wkv, ffn)

    def _step_layers(self, pack, tokens, att_shift, wkv, ffn_shift):
        """The recurrent step over all layers on plain tensors: (logits, att_shift, wkv, ffn_shift)."""
        emb, weights, ln_out_w, ln_out_b, head = pack
        x = F.embedding(tokens, emb)
        v_first = None
        att, new_wkv, ffn = [], [], []
        # without autograd every layer writes its new WKV state straight into its slot of one
        # [L, B, H, N, N] tensor: no stack copy of the largest part of the state at the end
        wkv_all = None if torch.is_grad_enabled() else torch.empty_like(wkv)
        wkv_out = wkv_all.unbind(0) if wkv_all is not None else (None,) * len(weights)
        layers = zip(self.blocks, weights, att_shift.unbind(0), wkv.unbind(0), ffn_shift.unbind(0), wkv_out)
        for block, W, att_prev, wkv_prev, ffn_prev, out in layers:
            x, v_first, a_s, S, f_s = block.step(W, x, tokens, v_first, att_prev, wkv_prev, ffn_prev, out)
            att.append(a_s)
            new_wkv.append(S)
            ffn.append(f_s)
        logits = layer_norm(x, ln_out_w, ln_out_b) @ head
        return logits, torch.stack(att), wkv_all if wkv_all is not None else torch.stack(new_wkv), torch.stack(ffn)

    def _cached_runner(self, key, build, failure: str, switch: str):
        """The step runner for ``key`` from the per-cache store, built by ``build()`` on first
        use. A runner that cannot be built warns once and turns its switch (``rnn_trace`` or
        ``rnn_cuda_graph``) off for this model."""
        runners = self._rnn_traces
        if key not in runners:
            if len(runners) >= 8:  # a handful of batch sizes in play at once; don't hoard graphs
                runners.clear()
            try:
                runners[key] = build()
            except (RuntimeError, TypeError) as err:  # pragma: no cover - torch builds without TorchScript/graphs
                warnings.warn(f"{failure}: {err}", RuntimeWarning, stacklevel=4)
                setattr(self, switch, False)
                return None
        return runners[key]

    def _traced_step(self, pack, tokens, state: RWKVState):
        """A frozen trace of ``_step_layers`` for this batch size and state layout, or None.

        Traced over the weight cache ``pack`` (its tensors become graph constants), so it is
        dropped with that cache. A trace that cannot be built turns tracing off for this model.
        """
        inputs = (tokens, state.att_shift, state.wkv, state.ffn_shift)

        def build():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer notes on Python ints taken from shapes
                traced = torch.jit.trace(_RecurrentStep(self, pack), inputs, check_trace=False)
                traced = torch.jit.freeze(traced.eval())
                # TorchScript's executor profiles and optimizes over the first calls (tens of
                # ms each): pay that here, not in the first live steps
                for _ in range(3):
                    traced(*inputs)
            return traced

        key = (tokens.shape[0], state.att_shift.dtype, state.wkv.dtype, tokens.device)
        return self._cached_runner(key, build, "RNN step tracing failed, using eager mode", "rnn_trace")

    def _graphed_step(self, pack, tokens, state: RWKVState):
        """On CUDA: the eager step over the weight cache captured once per batch size and state
        layout as a CUDA graph, then replayed: one launch per token instead of hundreds (at batch
        1 the step is bound by launch overhead, not by the GPU). Inputs are copied into the
        graph's static buffers and outputs copied out, so callers keep their own states (a
        session's bar snapshots). Dropped with the weight cache; None where capture fails.
        """
        key = ("graph", tokens.shape[0], state.att_shift.dtype, state.wkv.dtype, tokens.device, self.rnn_compile)
        return self._cached_runner(key, lambda: _GraphedStep(self, pack, tokens, state),
                                   "CUDA graph capture of the RNN step failed, using the traced step", "rnn_cuda_graph")

    def _fused_cpu_step(self, pack, batch_size: int, state: RWKVState):
        """The C++ step over the weight cache ``pack`` where it applies (CPU, fp32, small batch), else None."""
        emb = pack[0]
        if (
            emb.device.type != "cpu" or emb.dtype != torch.float32 or batch_size > cpu_ext.MAX_BATCH
            or state.att_shift.dtype != torch.float32 or state.ffn_shift.dtype != torch.float32
            or state.wkv.dtype != torch.float32 or state.wkv.device.type != "cpu" or self.config.head_size > cpu_ext.MAX_HEAD_SIZE
            or not cpu_ext.enabled()
        ):  # fmt: skip
            return None
        if self._rnn_fused is None:
            lib = cpu_ext.library()
            if lib is None:
                self.rnn_fused = False  # warned once; this model keeps the PyTorch step
                return None
            self._rnn_fused = cpu_ext.FusedStep(lib, pack, self.config.n_head, self.config.head_size)
        return self._rnn_fused

    def compile_blocks(self, enabled: bool = True) -> "RWKV7":
        """Run each block's parts around the WKV operator through ``torch.compile`` (parallel mode).

        Inductor fuses the element-wise work (token-shift mixes, gates, key normalisation,
        GroupNorm with the bonus term, the residuals and ChannelMix) and recomputes cheap
        element-wise results in backward instead of saving them. Same functions, same math;
        the first forward of each shape pays the compile.
        """
        for block in self.blocks:
            block.compiled = enabled
        return self

    def set_wkv_recompute(self, enabled: bool = True) -> "RWKV7":
        """Training: each layer's WKV operator keeps only its inputs and reruns its forward in
        backward (engine.kernels.wkv7, ``recompute``): less memory for one more WKV forward."""
        for block in self.blocks:
            block.wkv_recompute = enabled
        return self

    # ---- bookkeeping ------------------------------------------------------------------------

    def _drop_rnn_cache(self) -> None:
        self._rnn_cache = None
        self._rnn_traces = {}
        self._rnn_fused = None
        self._param_list = None

    def _apply(self, fn, *args, **kwargs):  # .to(), .float(), .cuda(), ...: parameters may be new objects
        self._drop_rnn_cache()
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._drop_rnn_cache()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"{self.config.describe()}, wkv_backend={self.wkv_backend!r}"


class _RecurrentStep(nn.Module):
    """``RWKV7._step_layers`` over one weight cache, as a module to trace (the weights are constants)."""

    def __init__(self, model: RWKV7, pack):
        super().__init__()
        self.step_layers = model._step_layers  # a bound method: the model is not registered as a submodule
        self.pack = pack

    def forward(self, tokens, att_shift, wkv, ffn_shift):
        return self.step_layers(self.pack, tokens, att_shift, wkv, ffn_shift)


class _GraphedStep:
    """``RWKV7._step_layers`` captured as a CUDA graph over static input and output buffers."""

    def __init__(self, model: RWKV7, pack, tokens, state: RWKVState):
        self.inputs = [tokens.clone(), state.att_shift.clone(), state.wkv.clone(), state.ffn_shift.clone()]
        step = torch.compile(model._step_layers, dynamic=False) if model.rnn_compile else model._step_layers
        side = torch.cuda.Stream(device=tokens.device)
        side.wait_stream(torch.cuda.current_stream(tokens.device))
        with torch.cuda.stream(side):  # warm-up outside the capture (workspace allocation, kernel loads)
            for _ in range(2):
                step(pack, *self.inputs)
        torch.cuda.current_stream(tokens.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = step(pack, *self.inputs)

    def __call__(self, tokens, att_shift, wkv, ffn_shift):
        for buf, value in zip(self.inputs, (tokens, att_shift, wkv, ffn_shift)):
            buf.copy_(value)
        self.graph.replay()
        return tuple(t.clone() for t in self.outputs)

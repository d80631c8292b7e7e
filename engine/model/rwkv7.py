"""The RWKV-7 ("x070") and "v8" ("x080", x070 + DeepEmbed) model, in parallel and recurrent mode.

One implementation of the block math (docs/rwkv7-spec.md sections 1-3) serves both modes: the
token mixes, projections, decay, value residual, GroupNorm, bonus term and ChannelMix are the
same functions; only the WKV recurrence differs. Parallel ("GPT") mode hands [B, T, H, N] tensors
to the WKV7 operator (engine.kernels.wkv7, chunk-wise on CPU); recurrent ("RNN") mode runs the
same functions on a [B, 1, C] slice and updates the fp32 state in O(H N^2) per token.

Module and parameter names are the official checkpoint keys (spec section 5), so
``state_dict()`` is an official RWKV-7 state_dict.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.kernels.wkv7 import wkv7

from .config import ModelConfig, check_head_size_env
from .state import RWKVState

DECAY_SCALE = math.exp(-0.5)  # d = exp(-e^{-1/2} sigmoid(z)) keeps every decay in (0.545, 1)
LN_X_EPS = 64e-5  # the reference's GroupNorm eps (not LayerNorm's 1e-5)


# ---------------------------------------------------------------------------------------------
# token shift: the previous token's LN output of the same layer


def token_shift(x: torch.Tensor, prev: torch.Tensor | None, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, T, C] -> x[t-1] per position; position 0 (and every packed sequence start) gets ``prev``.

    ``prev`` is [B, C] (or [n_seqs, C] with ``cu_seqlens``) or None for zeros.
    """
    B, T, C = x.shape
    if cu_seqlens is None:
        first = prev.to(x.dtype).unsqueeze(1) if prev is not None else x.new_zeros(B, 1, C)
        return torch.cat([first, x[:, :-1]], dim=1)
    shifted = torch.cat([x.new_zeros(B, 1, C), x[:, :-1]], dim=1)
    starts, lengths = cu_seqlens[:-1], cu_seqlens[1:] - cu_seqlens[:-1]
    nonempty = lengths > 0
    if prev is None:
        # a packed sequence start must not see the previous document's last token
        values = x.new_zeros(1, int(nonempty.sum()), C)
    else:
        values = prev.to(x.dtype)[nonempty].unsqueeze(0)
    return shifted.index_copy(1, starts[nonempty], values)


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


def wkv7_step(S, r, w, k, v, a, b):
    """One WKV7 step for all heads. S [B, H, N, N] fp32; r, w (pre-activation z), k, v, a, b [B, H, N].

    S <- S diag(d) + (S a) b^T + v k^T and y = S r, forming (S a) b^T in O(N^2).
    """
    r, k, v, a, b = (t.float() for t in (r, k, v, a, b))
    d = torch.exp(-DECAY_SCALE * torch.sigmoid(w.float()))
    sa = torch.matmul(S, a.unsqueeze(-1))  # [B, H, N, 1]
    S = torch.addcmul(torch.addcmul(S * d.unsqueeze(-2), sa, b.unsqueeze(-2)), v.unsqueeze(-1), k.unsqueeze(-2))
    y = torch.matmul(S, r.unsqueeze(-1)).squeeze(-1)
    return y, S


# ---------------------------------------------------------------------------------------------
# the layers


class TimeMix(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        C, H, N = config.n_embd, config.n_head, config.head_size
        self.layer_id = layer_id
        self.n_head, self.head_size = H, N

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

    def project(self, x, x_prev, v_first):
        """Everything before the recurrence. x, x_prev [B, T, C] (LN1 output and its token shift).

        Returns (r, z, k, v, a_k, b_k, g, v_first), all [B, T, C]; z (decay pre-activation) in fp32.
        """
        H, N = self.n_head, self.head_size
        delta = x_prev - x
        xr = torch.addcmul(x, delta, self.x_r)
        xw = torch.addcmul(x, delta, self.x_w)
        xk = torch.addcmul(x, delta, self.x_k)
        xv = torch.addcmul(x, delta, self.x_v)
        xa = torch.addcmul(x, delta, self.x_a)
        xg = torch.addcmul(x, delta, self.x_g)

        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        # the decay sits close to 1 and is compounded over many steps: keep it in fp32
        z = (self.w0 + torch.tanh(xw @ self.w1) @ self.w2).float()
        iclr = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)  # in-context learning rate a
        g = torch.sigmoid(xg @ self.g1) @ self.g2

        shape = k.shape
        kappa = F.normalize((k * self.k_k).view(*shape[:-1], H, N), dim=-1, p=2.0, eps=1e-12).view(shape)
        k = k * (1 + (iclr - 1) * self.k_a)
        if self.layer_id == 0:
            v_first = v
        else:
            v = torch.lerp(v, v_first, torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2))
        return r, z, k, v, -kappa, kappa * iclr, g, v_first

    def finish(self, y, r, k, v, g):
        """Everything after the recurrence: GroupNorm per head, bonus term, gate, output projection."""
        H, N = self.n_head, self.head_size
        shape = y.shape
        y = F.group_norm(y.reshape(-1, shape[-1]), H, self.ln_x.weight, self.ln_x.bias, LN_X_EPS).view(shape)
        heads = (*shape[:-1], H, N)
        bonus = (r * k * self.r_k.view(-1)).view(heads).sum(dim=-1, keepdim=True) * v.view(heads)
        return self.output((y + bonus.view(shape)) * g)


class ChannelMix(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        C = config.n_embd
        self.x_k = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, 4 * C, bias=False)
        self.value = nn.Linear(4 * C, C, bias=False)
        # "v8" DeepEmbed: a per-layer, per-token scale on the ChannelMix output
        self.enn = nn.Embedding(config.vocab_size, C) if config.deep_embed else None

    def forward(self, x, x_prev, idx):
        k = torch.addcmul(x, x_prev - x, self.x_k)
        out = self.value(torch.relu(self.key(k)).square())
        if self.enn is not None:
            out = out * self.enn(idx)
        return out


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

    def forward(self, x, idx, v_first, prev, cu_seqlens=None, want_state=False, backend="auto"):
        """Parallel mode over [B, T, C]; ``prev`` = (att_shift, wkv, ffn_shift) or Nones."""
        att_prev, wkv_prev, ffn_prev = prev
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        xa = self.ln1(x)
        r, z, k, v, a_k, b_k, g, v_first = self.att.project(xa, token_shift(xa, att_prev, cu_seqlens), v_first)
        y, wkv_state = wkv7(
            *(t.view(B, T, H, N) for t in (r, z, k, v, a_k, b_k)),
            initial_state=wkv_prev,
            output_final_state=want_state,
            cu_seqlens=cu_seqlens,
            backend=backend,
        )
        x = x + self.att.finish(y.reshape(B, T, C).to(x.dtype), r, k, v, g)
        xf = self.ln2(x)
        x = x + self.ffn(xf, token_shift(xf, ffn_prev, cu_seqlens), idx)
        if not want_state:
            return x, v_first, None
        return x, v_first, (last_token(xa, att_prev, cu_seqlens), wkv_state, last_token(xf, ffn_prev, cu_seqlens))

    def step(self, x, idx, v_first, att_prev, wkv_prev, ffn_prev):
        """Recurrent mode: the same math on x [B, 1, C] with the state of one token."""
        B, _, C = x.shape
        H, N = self.n_head, self.head_size
        xa = self.ln1(x)
        r, z, k, v, a_k, b_k, g, v_first = self.att.project(xa, att_prev.unsqueeze(1), v_first)
        y, wkv_state = wkv7_step(wkv_prev, *(t.view(B, H, N) for t in (r, z, k, v, a_k, b_k)))
        x = x + self.att.finish(y.view(B, 1, C).to(x.dtype), r, k, v, g)
        xf = self.ln2(x)
        x = x + self.ffn(xf, ffn_prev.unsqueeze(1), idx)
        return x, v_first, xa[:, 0], wkv_state, xf[:, 0]


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
        self._emb_ln0 = None  # (key, table) of LN0 folded into the embedding, for RNN mode
        if init:
            from .init import init_parameters  # noqa: PLC0415

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
        x = self.blocks[0].ln0(self.emb(idx))
        v_first = None
        layer_states = []
        for l, block in enumerate(self.blocks):
            prev = state.layer(l) if state is not None else (None, None, None)
            x, v_first, layer_state = block(x, idx, v_first, prev, cu_seqlens, return_state, self.wkv_backend)
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

    def _embed_one(self, idx):
        """LN0(emb[idx]); without autograd, from a cached table with LN0 folded in (spec section 1)."""
        if torch.is_grad_enabled():
            return self.blocks[0].ln0(self.emb(idx))
        ln0 = self.blocks[0].ln0
        params = (self.emb.weight, ln0.weight, ln0.bias)
        # any in-place update (optimizer step, load_state_dict) bumps a version: rebuild then
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        if self._emb_ln0 is None or self._emb_ln0[0] != key:
            with torch.no_grad():
                table = ln0(self.emb.weight)
            self._emb_ln0 = (key, table)
        return F.embedding(idx, self._emb_ln0[1])

    def step(self, tokens, state: RWKVState):
        """RNN mode: tokens [B] -> (logits [B, V], new state). ``state`` itself is not modified."""
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.emb.weight.device).view(-1)
        B = tokens.shape[0]
        if state.batch_size != B:
            raise ValueError(f"state holds {state.batch_size} sequences but {B} tokens were given")
        idx = tokens.view(B, 1)
        x = self._embed_one(idx)
        v_first = None
        att, wkv, ffn = [], [], []
        for l, block in enumerate(self.blocks):
            x, v_first, a_s, S, f_s = block.step(x, idx, v_first, state.att_shift[l], state.wkv[l], state.ffn_shift[l])
            att.append(a_s)
            wkv.append(S)
            ffn.append(f_s)
        logits = self.head(self.ln_out(x))[:, 0]
        return logits, RWKVState(torch.stack(att), torch.stack(wkv), torch.stack(ffn))

    # ---- bookkeeping ------------------------------------------------------------------------

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"{self.config.describe()}, wkv_backend={self.wkv_backend!r}"

"""The plain per-step WKV7 recurrence: the executable spec (rwkv7-spec.md section 2, step 9).

Kernel convention: for each head, with the fp32 state S of shape [N, N] (rows: value index i,
columns: key index j),

    S_t = S_{t-1} diag(d_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T,      y_t = S_t r_t,

where d_t = exp(-e^{-1/2} * sigmoid(w_t)) and ``w`` is the decay pre-activation z. The read-out
uses the updated state. Autograd flows through this loop, so it is also the reference backward.
"""
from __future__ import annotations

import math

import torch

DECAY_SCALE = math.exp(-0.5)  # e^{-1/2}
DECAY_BASE = math.exp(-DECAY_SCALE)  # the decay at sigmoid(z) = 1


def decay_from_preactivation(w: torch.Tensor) -> torch.Tensor:
    """d = exp(-e^{-1/2} sigmoid(z)) = DECAY_BASE ** sigmoid(z), computed in the given (>= fp32)
    dtype; the power form is two ops instead of three (each a kernel launch in the RNN step)."""
    return torch.pow(DECAY_BASE, torch.sigmoid(w))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _run_segment(r, d, k, v, a, b, S):
    """One independent sequence segment. Inputs [B, T, H, N] in compute dtype, S [B, H, N, N]."""
    T = r.shape[1]
    ys = []
    for t in range(T):
        sa = torch.einsum("bhij,bhj->bhi", S, a[:, t])
        S = (
            S * d[:, t, :, None, :]
            + sa[..., :, None] * b[:, t, :, None, :]
            + v[:, t, :, :, None] * k[:, t, :, None, :]
        )
        ys.append(torch.einsum("bhij,bhj->bhi", S, r[:, t]))
    y = torch.stack(ys, dim=1) if ys else r.new_zeros(r.shape)
    return y, S


def wkv7_reference(r, w, k, v, a, b, initial_state=None, output_final_state=False, cu_seqlens=None):
    B, T, H, N = r.shape
    cdt = compute_dtype(r.dtype)
    r_, k_, v_, a_, b_ = (x.to(cdt) for x in (r, k, v, a, b))
    d = decay_from_preactivation(w.to(cdt))
    if cu_seqlens is None:
        S0 = (
            initial_state.to(cdt)
            if initial_state is not None
            else r_.new_zeros(B, H, N, N)
        )
        y, S = _run_segment(r_, d, k_, v_, a_, b_, S0)
        return y.to(r.dtype), (S if output_final_state else None)
    bounds = [int(x) for x in cu_seqlens.tolist()]
    n_seqs = len(bounds) - 1
    ys, finals = [], []
    for n in range(n_seqs):
        s, e = bounds[n], bounds[n + 1]
        S0 = (
            initial_state[n : n + 1].to(cdt)
            if initial_state is not None
            else r_.new_zeros(1, H, N, N)
        )
        sl = slice(s, e)
        y, S = _run_segment(r_[:, sl], d[:, sl], k_[:, sl], v_[:, sl], a_[:, sl], b_[:, sl], S0)
        ys.append(y)
        finals.append(S)
    y = torch.cat(ys, dim=1) if ys else r_.new_zeros(1, 0, H, N)
    final = torch.cat(finals, dim=0) if output_final_state else None
    return y.to(r.dtype), final

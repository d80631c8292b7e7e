"""The WKV7 recurrence for one token (RNN mode), beside the sequence backends it must agree with
(tests/unit/test_wkv7_step.py checks it against ``wkv7_reference`` at T = 1, state in and out)."""
from __future__ import annotations

import torch

from .reference import decay_from_preactivation


def wkv7_step(S, r, w, k, v, kappa, b, H: int, N: int, out: torch.Tensor | None = None):
    """One WKV7 step for all heads. S [B, H, N, N] fp32 (the step runs in S's dtype); r, w (pre-activation z), k, v, kappa, b [B, C].

    With the kernel's a = -kappa: S <- S diag(d) + (S a) b^T + v k^T and y = S r, forming the
    rank-1 term from the matrix-vector product S a (O(N^2), never the N x N outer product first).
    The new S goes to ``out`` ([B, H, N, N], not S itself) when given, else to a new tensor.
    Returns y [B, C] in S's dtype and the new S.
    """
    B = S.shape[0]
    if r.dtype != S.dtype:  # bf16 activations over the fp32 state (fp64 in the reference tests)
        r, k, v, kappa, b = (t.to(S.dtype) for t in (r, k, v, kappa, b))
    BH = B * H
    d = decay_from_preactivation(w)
    S = S.view(BH, N, N)
    s_kappa = torch.bmm(S, kappa.view(BH, N, 1))
    S_new = torch.mul(S, d.view(BH, 1, N), out=out.view(BH, N, N) if out is not None else None)
    S_new.baddbmm_(s_kappa, b.view(BH, 1, N), alpha=-1.0).baddbmm_(v.view(BH, N, 1), k.view(BH, 1, N))
    y = torch.bmm(S_new, r.view(BH, N, 1))
    return y.view(B, H * N), S_new.view(B, H, N, N)

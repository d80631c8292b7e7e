"""The one-token recurrence (RNN mode) against the sequence reference at T = 1, fresh random
inputs: output and new state, in fp64 and fp32, with the state written to ``out`` or a new tensor."""
from __future__ import annotations

import pytest
import torch

from engine.kernels.wkv7 import wkv7_reference, wkv7_step


def _inputs(B, H, N, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    S = rn(B, H, N, N) * 0.3
    r, w, k, v = rn(B, H * N) * 0.5, rn(B, H * N) * 1.5 - 0.5, rn(B, H * N) * 0.5, rn(B, H * N)
    kappa = torch.nn.functional.normalize(rn(B, H, N), dim=-1).view(B, H * N)
    b = kappa * torch.sigmoid(rn(B, H * N))
    return S, r, w, k, v, kappa, b


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("use_out", [False, True])
def test_step_equals_the_reference_at_one_token(dtype, tol, use_out):
    B, H, N = 3, 2, 16
    S, r, w, k, v, kappa, b = _inputs(B, H, N, dtype, torch.seed() % 2**31)
    before = S.clone()
    out = torch.full_like(S, float("nan")) if use_out else None
    y, S_new = wkv7_step(S, r, w, k, v, kappa, b, H, N, out)
    seq = lambda t: t.view(B, 1, H, N)  # noqa: E731
    y_ref, S_ref = wkv7_reference(seq(r), seq(w), seq(k), seq(v), seq(-kappa), seq(b), initial_state=S,
                                  output_final_state=True)
    torch.testing.assert_close(y, y_ref.view(B, H * N).to(y.dtype), rtol=tol, atol=tol)
    torch.testing.assert_close(S_new, S_ref.to(S_new.dtype), rtol=tol, atol=tol)
    assert torch.equal(S, before), "the caller's state must not change"
    if use_out:
        assert S_new.data_ptr() == out.data_ptr()

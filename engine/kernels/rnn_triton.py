"""The recurrent step's element-wise work as a few Triton kernels (the GPU RNN step is launch-bound).

For one token per sequence, each layer's:
- ``time_mix_tail``: everything of the TimeMix between its products and its output projection:
  the decay, the kk normalisation (kappa), the removal key, the value residual mix, the WKV state
  update and read-out, the per-head GroupNorm, the bonus term and the output gate (~25 PyTorch
  kernels: engine.model.block_math's ``time_mix_project`` after its products,
  ``engine.kernels.wkv7.wkv7_step`` and ``time_mix_finish`` before its product), one program per
  (sequence, head);
- ``layer_norm_mix``: a LayerNorm and the token-shift mixes of its output (LN1 + the six TimeMix
  mixes, LN2 + the ChannelMix mix: two kernels each in PyTorch);
- ``low_rank_activations`` (sigmoid and tanh of two low-rank rows) and ``relu_square`` (the
  ChannelMix's activation): one kernel each instead of two.

They are drop-ins for that math, tested against it (tests/unit/test_rnn_triton.py, under Triton's
interpreter on the CPU; tests/integration/test_model_gpu.py on a GPU). Triton is optional: this
module imports with torch alone and ``available()`` says whether the kernels can run.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os

import torch

from .wkv7.reference import DECAY_BASE

@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def available(device: torch.device | str) -> bool:
    """Whether the fused kernels can run on ``device``: Triton importable, and a CUDA device (or the
    CPU under Triton's interpreter, TRITON_INTERPRET=1, which the tests use)."""
    if not _triton_installed():
        return False
    kind = torch.device(device).type
    return kind == "cuda" or (kind == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


@functools.cache
def _kernels():
    """The jitted kernels' module, imported on first use. Triton decides when it is first
    imported whether it interprets (TRITON_INTERPRET=1), so the CPU tests run in a fresh process."""
    from . import _rnn_triton_kernels

    return _rnn_triton_kernels


def time_mix_tail(rkv: torch.Tensor, up: torch.Tensor, v_first: torch.Tensor | None, S: torch.Tensor, W,
                  H: int, N: int, eps: float, S_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One launch of the tail. rkv [3, B, C] (r, k, v products), up [4, B, C] (the low-rank
    up-projections with their biases: value gate, in-context rate, output gate, decay z),
    ``v_first`` [B, C] (None in layer 0, which defines it), S [B, H, N, N] fp32, ``W`` the
    layer's TimeMixWeights, ``eps`` the GroupNorm's. Returns (the gated output [B, C] in rkv's dtype, ready for the
    output projection, and the new state, written to ``S_out`` when given)."""
    _, B, C = rkv.shape
    if N & (N - 1):
        raise ValueError(f"the fused time-mix tail needs a power-of-two head size, not {N}")
    rkv, up, S = rkv.contiguous(), up.contiguous(), S.contiguous()
    S_out = torch.empty_like(S) if S_out is None else S_out
    out = torch.empty(B, C, dtype=rkv.dtype, device=rkv.device)
    first = v_first is None
    _kernels().time_mix_tail_kernel[(B * H,)](
        rkv, up, rkv if first else v_first.contiguous(), S, S_out, out,
        W.k_k, W.k_a, W.one_minus_k_a, W.r_k, W.ln_w, W.ln_b,
        B * C, math.log2(DECAY_BASE), eps,
        H=H, N=N, FIRST=first,
    )  # fmt: skip
    return out, S_out


_BLOCK = 1024  # elements per program of the element-wise kernels


def layer_norm_mix(x: torch.Tensor, prev: torch.Tensor, w: torch.Tensor, b: torch.Tensor, mix: torch.Tensor,
                   eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x, prev [B, C]; ``mix`` [K, C]. Returns (xa = LayerNorm(x) [B, C], the new shift state, and
    the K token-shift mixes lerp(xa, prev, mix[k]) as [K, B, C]), in x's dtype, one launch."""
    B, C = x.shape
    K = mix.shape[0]
    xa = torch.empty_like(x)
    mixed = torch.empty(K, B, C, dtype=x.dtype, device=x.device)
    _kernels().layer_norm_mix_kernel[(B,)](
        x.contiguous(), prev.to(x.dtype).contiguous(), w, b, mix.contiguous(), xa, mixed, B, C, eps,
        K=K, BLOCK=triton_block(C),
    )  # fmt: skip
    return xa, mixed


def low_rank_activations(low: torch.Tensor) -> torch.Tensor:
    """In place on the contiguous [4, rows, R] down-projections: sigmoid on row 2 (gate), tanh on
    row 3 (decay), one launch (block_math's ``_low_rank_activations`` without autograd)."""
    n = low[2].numel()
    _kernels().low_rank_activations_kernel[(triton_cdiv(2 * n, _BLOCK),)](low[2:], n, BLOCK=_BLOCK)
    return low


def relu_square(h: torch.Tensor) -> torch.Tensor:
    """In place on a contiguous ``h``: relu(h)^2, one launch."""
    _kernels().relu_square_kernel[(triton_cdiv(h.numel(), _BLOCK),)](h, h.numel(), BLOCK=_BLOCK)
    return h


def triton_block(n: int) -> int:
    """The smallest power of two >= n (a Triton block must be one)."""
    return 1 << max(0, (n - 1).bit_length())


def triton_cdiv(n: int, d: int) -> int:
    return -(-n // d)

"""The recurrent step's time-mix tail as one Triton kernel (the GPU RNN step is launch-bound).

Everything of a layer's TimeMix between its products and its output projection, for one token
per sequence: the decay, the kk normalisation (kappa), the removal key, the value residual mix,
the WKV state update and read-out, the per-head GroupNorm, the bonus term and the output gate.
The plain PyTorch step runs these as ~25 kernels a layer (engine.model.block_math's
``time_mix_project`` after its products, ``engine.kernels.wkv7.wkv7_step`` and
``time_mix_finish`` before its product); this is one launch, one program per (sequence, head).

It is a drop-in for that math, tested against it (tests/unit/test_time_mix_tail.py, under
Triton's interpreter on the CPU; tests/integration/test_model_gpu.py on a GPU). Triton is
optional: this module imports with torch alone and ``available()`` says whether the kernel can run.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os

import torch

from .wkv7.reference import DECAY_BASE

_KERNELS: dict = {}


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def available(device: torch.device | str) -> bool:
    """Whether the fused tail can run on ``device``: Triton importable, and a CUDA device (or the
    CPU under Triton's interpreter, TRITON_INTERPRET=1, which the tests use)."""
    if not _triton_installed():
        return False
    kind = torch.device(device).type
    return kind == "cuda" or (kind == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def _kernel():
    """The jitted kernel. Triton decides when it decorates whether it interprets, so the module
    holding it is (re)loaded whenever TRITON_INTERPRET differs from its last load."""
    import importlib

    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if interpret not in _KERNELS:
        from . import _time_mix_tail_triton as module

        if _KERNELS:  # loaded before under the other setting
            module = importlib.reload(module)
        _KERNELS.clear()
        _KERNELS[interpret] = module.time_mix_tail_kernel
    return _KERNELS[interpret]


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
    _kernel()[(B * H,)](
        rkv, up, rkv if first else v_first.contiguous(), S, S_out, out,
        W.k_k, W.k_a, W.one_minus_k_a, W.r_k, W.ln_w, W.ln_b,
        B * C, math.log2(DECAY_BASE), eps,
        H=H, N=N, FIRST=first,
    )  # fmt: skip
    return out, S_out

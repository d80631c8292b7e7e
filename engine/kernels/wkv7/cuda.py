"""CUDA backend of the WKV7 operator (kernels in ``csrc/``, built by ``engine.kernels.build``).

``wkv7_cuda`` has the semantics of ``reference.wkv7_reference``: bf16 compute inputs (other float
dtypes are cast), fp32 state in and out, ``cu_seqlens`` packing, any T. Its backward returns
gradients for r, w, k, v, a, b and the initial state, and accepts a gradient on the final state
(state passing across training chunks). Saved for backward: S_{t-1} a_t in fp32 (4 B) and a state
snapshot every 16 steps (16 B) per token-channel.

Few (sequence, head) pairs leave most of the GPU idle, so a long sequence is cut into segments run
by separate blocks and stitched with S_out = S_in P + C (rwkv7-spec.md section 8); ``plan`` picks
the segment count and the kernel variant (how the state is spread over threads) from the shape.

``wkv7_cuda_step`` is the batched recurrent step for generation (state updated in place); it has
no backward, and asking it for gradients fails at once instead of returning wrong ones.
"""
from __future__ import annotations

import math
import os

import torch

from .. import build as _build

HEAD_SIZES = (64,)  # compiled head sizes (csrc/wkv7.cu dispatch)
# compiled kernel variants: 10 * (lanes sharing a state row) + (rows per lane group)
VARIANTS = (41, 82, 182)


def is_available() -> bool:
    """True when the kernels are built (building them on first call) and a GPU is present."""
    if not torch.cuda.is_available():
        return False
    return _build.load_kernels()


def _ops():
    if not _build.load_kernels():
        raise RuntimeError(f"WKV7 CUDA kernels are unavailable: {_build.failure_reason()}")
    return torch.ops.pianomuse_wkv7


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def plan(n_seqs: int, H: int, T: int, packed: bool, device: torch.device) -> tuple[int, int]:
    """(segments per sequence, kernel variant) for this shape; env vars override for benches."""
    blocks = n_seqs * H
    sms = _sm_count(device)
    # 182 (two backward blocks per multiprocessor) where B*H fills one to two waves of blocks:
    # measured 145.1 vs 149.0 ms per L12-D768-T2048-B16 training step on an H100 (bench/RESULTS.md)
    default = 182 if sms <= blocks < 2 * sms else 82
    variant = int(os.environ.get("PIANOMUSE_WKV7_VARIANT", default))
    if "PIANOMUSE_WKV7_NSEG" in os.environ:
        nseg = int(os.environ["PIANOMUSE_WKV7_NSEG"])
    elif packed or blocks >= sms:
        nseg = 1
    else:
        # enough blocks for ~2 per multiprocessor, but segments of >= 128 steps so the stitching
        # (two extra sweeps over a segment plus a 64^3 product per segment) stays cheap
        nseg = max(1, min(math.ceil(2 * sms / blocks), T // 128))
    return (1 if packed else nseg), variant


def _check_head_size(head_size: int) -> None:
    if head_size not in HEAD_SIZES:
        raise RuntimeError(
            f"WKV7 CUDA kernels are compiled for head size {HEAD_SIZES}, not {head_size}; add it to the "
            "dispatch in csrc/wkv7.cu or use backend='chunked'."
        )


class _WKV7(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, w, k, v, a, b, s0, cu, nseg, variant):
        save = any(ctx.needs_input_grad[:7])
        y, s_last, sa, snaps = _ops().fwd(r, w, k, v, a, b, s0, cu, nseg, variant, save)
        if save:
            ctx.save_for_backward(r, w, k, v, a, b, sa, snaps, s_last, cu)
        ctx.nseg, ctx.variant, ctx.has_s0 = nseg, variant, s0 is not None
        return y, s_last

    @staticmethod
    def backward(ctx, dy, ds_last):
        r, w, k, v, a, b, sa, snaps, s_last, cu = ctx.saved_tensors
        dy = torch.zeros_like(r) if dy is None else dy.to(torch.bfloat16).contiguous()
        ds_last = None if ds_last is None else ds_last.float().contiguous()
        dr, dw, dk, dv, da, db, ds0 = _ops().bwd(r, w, k, v, a, b, dy, ds_last, sa, snaps, s_last, cu, ctx.nseg,
                                                 ctx.variant)
        return dr, dw, dk, dv, da, db, (ds0 if ctx.has_s0 else None), None, None, None


def wkv7_cuda(r, w, k, v, a, b, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Same contract as ``wkv7_reference``; inputs [B, T, H, N] on a CUDA device."""
    B, T, H, N = r.shape
    _check_head_size(N)
    out_dtype = r.dtype
    r, w, k, v, a, b = (x.to(torch.bfloat16).contiguous() for x in (r, w, k, v, a, b))
    s0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
    cu = None if cu_seqlens is None else cu_seqlens.to(device=r.device, dtype=torch.int32).contiguous()
    n_seqs = B if cu is None else cu.numel() - 1
    nseg, variant = plan(n_seqs, H, T, cu is not None, r.device)
    y, s_last = _WKV7.apply(r, w, k, v, a, b, s0, cu, nseg, variant)
    return y.to(out_dtype), (s_last if output_final_state else None)


def wkv7_cuda_step(r, w, k, v, a, b, state):
    """One token for each of B sequences: inputs [B, H, N], ``state`` [B, H, N, N] fp32 (updated in
    place). Returns y [B, H, N] in r's dtype. Forward only."""
    if torch.is_grad_enabled() and any(x.requires_grad for x in (r, w, k, v, a, b, state)):
        raise RuntimeError(
            "the CUDA WKV7 recurrent step has no backward; train with the sequence operator "
            "(engine.kernels.wkv7.wkv7) or wrap generation in torch.no_grad()."
        )
    if state.dtype != torch.float32 or not state.is_contiguous():
        raise ValueError("wkv7_cuda_step needs a contiguous float32 state [B, H, N, N] (it is updated in place)")
    N = r.shape[-1]
    _check_head_size(N)
    out_dtype = r.dtype
    r, w, k, v, a, b = (x.to(torch.bfloat16).contiguous() for x in (r, w, k, v, a, b))
    y = _ops().step(r, w, k, v, a, b, state, 41)
    return y.to(out_dtype)


__all__ = ["is_available", "wkv7_cuda", "wkv7_cuda_step", "plan", "HEAD_SIZES"]

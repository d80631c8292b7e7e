"""The WKV7 operator: one entry point, several backends, all checked against ``reference``.

``wkv7(r, w, k, v, a, b, *, initial_state=None, output_final_state=False, cu_seqlens=None,
backend="auto", recompute=False) -> (y, final_state_or_None)``

Shapes are [B, T, H, N]; ``w`` is the decay pre-activation z (d = exp(-e^{-1/2} sigmoid(z)));
``a``/``b`` follow the kernel convention (a = -kappa_hat, b = kappa_hat * iclr). ``initial_state``
is [B or n_seqs, H, N, N] fp32. With ``cu_seqlens`` (int tensor [n_seqs + 1]) the batch must be 1
and the state resets at each boundary.

Backends: "reference" (plain loop, the spec), "chunked" (PyTorch chunk-wise, CPU default),
"cuda" (csrc kernels). "auto" picks cuda for CUDA tensors when it is built, else chunked.
RWKV_CUDA_ON=0 forces the PyTorch paths.

``recompute=True`` (training) keeps only the operator's inputs for backward and runs the forward
again there, whatever the backend: the CUDA kernel's saved activations (S_{t-1} a_t and the state
snapshots, 20 B per token-channel on top of the 12 B of bf16 inputs) or the chunked backend's
intermediates then live only while that layer's backward runs, for one more forward per step.
"""
from __future__ import annotations

import logging
import os

import torch

from .reference import wkv7_reference

log = logging.getLogger(__name__)

BACKENDS = ("reference", "chunked", "cuda")


def _chunked():
    from .chunked import wkv7_chunked  # noqa: PLC0415 (optional until built)

    return wkv7_chunked


def cuda_available() -> bool:
    """True when the CUDA backend can run here (GPU present, not disabled, kernels load)."""
    if os.environ.get("RWKV_CUDA_ON", "1") == "0" or not torch.cuda.is_available():
        return False
    try:
        from . import cuda as _cuda  # noqa: PLC0415
    except ImportError:
        return False
    return _cuda.is_available()


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Which backend ``auto`` means for tensors on ``device``."""
    if backend not in BACKENDS + ("auto",):
        raise ValueError(f"unknown WKV7 backend {backend!r}; choose one of {', '.join(BACKENDS)} or 'auto'")
    if backend != "auto":
        return backend
    if torch.device(device).type == "cuda" and cuda_available():
        return "cuda"
    return "chunked"


def wkv7(r, w, k, v, a, b, *, initial_state=None, output_final_state=False, cu_seqlens=None, backend="auto",
         recompute=False):
    if r.dim() != 4:
        raise ValueError(f"wkv7 expects [B, T, H, N] inputs, got shape {tuple(r.shape)}")
    if cu_seqlens is not None and r.shape[0] != 1:
        raise ValueError("wkv7 with cu_seqlens needs batch size 1 (sequences packed along T)")
    name = resolve_backend(backend, r.device)
    if name == "reference":
        fn = wkv7_reference
    elif name == "chunked":
        fn = _chunked()
    else:
        from . import cuda as _cuda  # noqa: PLC0415

        fn = _cuda.wkv7_cuda
    if recompute and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint  # noqa: PLC0415

        def run(r, w, k, v, a, b, s0):
            return fn(r, w, k, v, a, b, initial_state=s0, output_final_state=output_final_state, cu_seqlens=cu_seqlens)

        return checkpoint(run, r, w, k, v, a, b, initial_state, use_reentrant=False, preserve_rng_state=False)
    return fn(r, w, k, v, a, b, initial_state=initial_state, output_final_state=output_final_state, cu_seqlens=cu_seqlens)


__all__ = ["wkv7", "wkv7_reference", "resolve_backend", "cuda_available", "BACKENDS"]

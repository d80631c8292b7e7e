"""The WKV7 operator: one entry point, several backends, all checked against ``reference``.

``wkv7(r, w, k, v, a, b, *, initial_state=None, output_final_state=False, cu_seqlens=None,
backend="auto", recompute=False) -> (y, final_state_or_None)``

Shapes are [B, T, H, N]; ``w`` is the decay pre-activation z (d = exp(-e^{-1/2} sigmoid(z)));
``a``/``b`` follow the kernel convention (a = -kappa_hat, b = kappa_hat * iclr). ``initial_state``
is [B or n_seqs, H, N, N] fp32. With ``cu_seqlens`` (int tensor [n_seqs + 1]) the batch must be 1
and the state resets at each boundary.

Backends: "reference" (plain loop, the spec), "chunked" (PyTorch chunk-wise, CPU default),
"cuda" (csrc kernels). "auto" picks cuda for CUDA tensors when it is built, else chunked.
RWKV_CUDA_ON=0 forces the PyTorch paths: "auto" and "cuda" both run chunked then.
``explain_backend`` says which backend runs and why; the first choice per device is logged.

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
from .step import wkv7_step

log = logging.getLogger(__name__)

BACKENDS = ("reference", "chunked", "cuda")


def _chunked():
    from .chunked import wkv7_chunked  # optional until built

    return wkv7_chunked


def cuda_disabled() -> bool:
    """RWKV_CUDA_ON=0 (the RWKV tooling's switch) forces the PyTorch paths, even where CUDA works."""
    return os.environ.get("RWKV_CUDA_ON", "1").strip() == "0"


def cuda_available() -> bool:
    """True when the CUDA backend can run here (GPU present, not disabled, kernels load)."""
    if cuda_disabled() or not torch.cuda.is_available():
        return False
    try:
        from . import cuda as _cuda
    except ImportError:
        return False
    return _cuda.is_available()


def explain_backend(backend: str, device: torch.device | str, head_size: int | None = None) -> tuple[str, str]:
    """(backend that runs, why) for a requested ``backend`` on tensors on ``device``; with
    ``head_size``, "auto" also checks that the CUDA kernels are compiled for it."""
    if backend not in BACKENDS + ("auto",):
        raise ValueError(f"unknown WKV7 backend {backend!r}; choose one of {', '.join(BACKENDS)} or 'auto'")
    if backend in ("cuda", "auto") and cuda_disabled():
        return "chunked", "RWKV_CUDA_ON=0 forces the PyTorch path"
    if backend != "auto":
        return backend, "asked for by name"
    if torch.device(device).type != "cuda":
        return "chunked", "CPU tensors" if torch.cuda.is_available() else "no CUDA GPU visible"
    if not cuda_available():
        return "chunked", "CUDA kernels not built here"
    from .cuda import HEAD_SIZES

    if head_size is not None and head_size not in HEAD_SIZES:
        sizes = ", ".join(map(str, HEAD_SIZES))
        return "chunked", f"the CUDA kernels are compiled for head size {sizes}, not {head_size}"
    return "cuda", "CUDA kernels available"


# (requested, device type, chosen, why) already logged: resolve_backend runs in every layer's forward
_announced: set[tuple[str, str, str, str]] = set()


def resolve_backend(backend: str, device: torch.device | str, head_size: int | None = None) -> str:
    """Which backend runs for ``backend`` ("auto" or a name) on tensors on ``device``.

    Each distinct outcome per (request, device type) is logged once at INFO, so a run's log says
    which operator it trains with.
    """
    if backend in BACKENDS and backend != "cuda":
        return backend  # the PyTorch backends run as asked, anywhere
    name, why = explain_backend(backend, device, head_size)
    key = (backend, torch.device(device).type, name, why)
    if key not in _announced:
        _announced.add(key)
        log.info("WKV7 backend %r on %s runs %s (%s)", backend, key[1], name, why)
    return name


def wkv7(r, w, k, v, a, b, *, initial_state=None, output_final_state=False, cu_seqlens=None, backend="auto",
         recompute=False):
    if r.dim() != 4:
        raise ValueError(f"wkv7 expects [B, T, H, N] inputs, got shape {tuple(r.shape)}")
    if cu_seqlens is not None and r.shape[0] != 1:
        raise ValueError("wkv7 with cu_seqlens needs batch size 1 (sequences packed along T)")
    name = resolve_backend(backend, r.device, r.shape[-1])
    if name == "reference":
        fn = wkv7_reference
    elif name == "chunked":
        fn = _chunked()
    else:
        from . import cuda as _cuda

        fn = _cuda.wkv7_cuda
    if recompute and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        def run(r, w, k, v, a, b, s0):
            return fn(r, w, k, v, a, b, initial_state=s0, output_final_state=output_final_state, cu_seqlens=cu_seqlens)

        return checkpoint(run, r, w, k, v, a, b, initial_state, use_reentrant=False, preserve_rng_state=False)
    return fn(r, w, k, v, a, b, initial_state=initial_state, output_final_state=output_final_state, cu_seqlens=cu_seqlens)


__all__ = ["wkv7", "wkv7_reference", "wkv7_step", "resolve_backend", "explain_backend", "cuda_available", "cuda_disabled", "BACKENDS"]

"""A fused C++ CPU fast path for the RNN step (``csrc/cpu/rwkv7_step.cpp``), built on first use.

At batch 1 on CPU the PyTorch step (traced or eager) spends most of each token in per-op cost:
~1,200 aten calls against a weight-streaming floor of ~0.5-0.9 ms. The C++ file runs the same
step (all layers, one call) as plain loops over the engine's cached RNN weights; it is a fast
path checked against ``RWKV7._step_layers`` (tests/unit/test_model_cpu_ext.py), like the CUDA
kernel against the chunked operator, not a second definition of the math.

It is used by ``RWKV7.step`` only without autograd, on CPU, in fp32, at batch <= ``MAX_BATCH``.
Nothing is compiled at import: the first such step builds it (torch.utils.cpp_extension + ninja,
~2-5 s, -O3 -march=native or its ARM spelling, no fast-math) into ``~/.cache/pianomuse/cpu_ext-<torch>/`` under a
name that carries a hash of the source, flags and CPU, so an edited source or another machine's
build is never reused. The source includes no torch headers (the call goes through ctypes with
raw pointers), which keeps that build short. If no compiler is present or the build fails, one
warning says so and the step keeps its PyTorch path. ``PIANOMUSE_CPU_EXT=0`` turns it off.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import sys
import warnings
from pathlib import Path

import torch

from .block_math import LOW_RANK_ORDER

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parents[2] / "csrc" / "cpu" / "rwkv7_step.cpp"
# tuned for the CPU that builds it (hence the per-CPU name); AVX-512 machines use full-width vectors
_ARCH_FLAGS = {
    "x86_64": ("-march=native", "-mprefer-vector-width=512"),
    "amd64": ("-march=native", "-mprefer-vector-width=512"),
    "aarch64": ("-mcpu=native",),
    "arm64": ("-mcpu=native",),
}
CFLAGS = ("-O3", *_ARCH_FLAGS.get(platform.machine().lower(), ()), "-fopenmp-simd", "-std=c++17")
MAX_BATCH = 16  # above this the PyTorch step's GEMMs win: the fused loops are matrix-vector code
MAX_HEAD_SIZE = 1024  # the per-head scratch arrays in the C++ step
ENV_SWITCH = "PIANOMUSE_CPU_EXT"
PER_LAYER = 28  # weight pointers per layer, in the order the C++ file documents

_STATE: dict[str, object] = {}  # "lib": the loaded library, or "failed": the reason (once per process)


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_tag() -> str:
    """What -march=native depends on: the CPU model and flags (a shared home must not mix them)."""
    info = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("model name", "flags")):
                    info += line
                if line.strip() == "":
                    break
    except OSError:
        pass
    return info or platform.processor() or platform.machine()


def cache_dir() -> Path:
    base = os.environ.get("PIANOMUSE_KERNEL_CACHE")
    root = Path(base) if base else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pianomuse"
    return root / f"cpu_ext-{torch.__version__.split('+')[0]}"


def extension_name() -> str:
    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    digest.update(" ".join(CFLAGS).encode())
    digest.update(_cpu_tag().encode())
    return f"pianomuse_cpu_step_{digest.hexdigest()[:16]}"


def _build() -> ctypes.CDLL:
    """Compile (or reuse this exact build) and load the library; raises RuntimeError with one sentence."""
    from engine.kernels.build import BuildError, build_lock, find_cxx

    if not SOURCE.exists():
        raise RuntimeError(f"the C++ source {SOURCE} is missing; reinstall from the repository.")
    if find_cxx() is None:
        raise RuntimeError("no C++ compiler (c++, g++ or clang++) is on PATH; install one (e.g. build-essential).")
    from torch.utils import cpp_extension  # pulls in setuptools; only when building

    name = extension_name()
    directory = cache_dir() / name
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with build_lock(directory, wait_s=120.0):  # one build at a time; a killed build's lock is cleared
            path = cpp_extension.load(
                name=name, sources=[str(SOURCE)], extra_cflags=list(CFLAGS),
                build_directory=str(directory), is_python_module=False, verbose=False,
            )  # fmt: skip
    except BuildError as exc:
        raise RuntimeError(exc.reason) from exc
    except Exception as exc:  # compiler failures arrive as several exception types
        text = str(exc)
        (directory / "build.log").write_text(text)
        first = next((ln.strip() for ln in text.splitlines() if "error" in ln.lower()), text.strip()[:200])
        raise RuntimeError(f"compiling {SOURCE.name} failed ({first}); the full log is in {directory / 'build.log'}.") from exc
    lib = ctypes.CDLL(str(path))
    fn = lib.pianomuse_rwkv7_step
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int] + [ctypes.c_void_p] * 8
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded library, building it on the first call; None (after one loud warning) if it cannot be."""
    if "lib" in _STATE:
        return _STATE["lib"]  # type: ignore[return-value]
    if "failed" in _STATE:
        return None
    try:
        _STATE["lib"] = _build()
        return _STATE["lib"]  # type: ignore[return-value]
    except (RuntimeError, OSError) as exc:
        msg = (f"fused CPU RNN step unavailable: {exc} Falling back to the PyTorch step (slower at batch 1); "
               f"set {ENV_SWITCH}=0 to silence this.")
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        log.warning(msg)
        print(f"[pianomuse] {msg}", file=sys.stderr)
        _STATE["failed"] = str(exc)
        return None


class FusedStep:
    """The C++ step bound to one RNN weight cache (``RWKV7._rnn_weights``); holds its tensors alive."""

    def __init__(self, lib: ctypes.CDLL, pack, n_head: int, head_size: int):
        emb, blocks, ln_out_w, ln_out_b, head = pack[:5]
        C = emb.shape[1]
        tensors = []
        for W in blocks:
            att, ffn = W.att, W.ffn
            # the C++ reads each low-rank matrix unpadded: contiguous copies of the cache's stacks
            low = {}
            for i, (name, rank) in enumerate(zip(LOW_RANK_ORDER, att.lora_ranks)):
                low[name] = (att.lora_down[i, :, :rank].contiguous(), att.lora_up[i, :rank].contiguous())
            w0 = att.w0 if att.w0 is not None else att.lora_bias[3, 0]
            tensors += [W.ln1_w, W.ln1_b, W.ln2_w, W.ln2_b, att.mix, att.RKV, w0, *low["w"],
                        att.lora_bias[1, 0], *low["a"], att.lora_bias[0, 0], *low["v"], *low["g"],
                        att.k_k, att.k_a, att.one_minus_k_a, att.r_k, att.O, att.ln_w, att.ln_b,
                        ffn.x_k, ffn.K, ffn.V, ffn.enn]
        tensors += [emb, ln_out_w, ln_out_b, head]
        for t in tensors:  # the C++ reads raw row-major fp32 buffers
            if t is not None and (t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu"):
                raise ValueError("the fused CPU step needs contiguous fp32 CPU weights")
        self._tensors = tensors  # keeps every buffer alive as long as the pointers below
        self._pointers = (ctypes.c_void_p * len(tensors))(*(t.data_ptr() if t is not None else None for t in tensors))
        v_rank, a_rank, g_rank, w_rank = blocks[0].att.lora_ranks
        dims = [len(blocks), C, n_head, head_size, emb.shape[0], w_rank, a_rank, v_rank, g_rank, blocks[0].ffn.K.shape[1]]
        self._dims = (ctypes.c_int64 * len(dims))(*dims)
        self._fn = lib.pianomuse_rwkv7_step
        self.vocab_size = emb.shape[0]
        self._shift_shape = (len(blocks), C)  # [L, B, C] with B in the middle
        self._wkv_shape = (len(blocks), n_head, head_size, head_size)

    def __call__(self, tokens: torch.Tensor, att_shift: torch.Tensor, wkv: torch.Tensor, ffn_shift: torch.Tensor):
        """(logits [B, V], att_shift, wkv, ffn_shift): the new state in new tensors, inputs untouched."""
        tokens = tokens.contiguous()
        att_shift, wkv, ffn_shift = att_shift.contiguous(), wkv.contiguous(), ffn_shift.contiguous()
        B = tokens.shape[0]
        L, C = self._shift_shape
        _, H, N, _ = self._wkv_shape
        # the C++ trusts these shapes with raw pointers: a mismatch must stop here, not read past a buffer
        if att_shift.shape != (L, B, C) or ffn_shift.shape != (L, B, C) or wkv.shape != (L, B, H, N, N):
            raise ValueError(f"state shapes {tuple(att_shift.shape)}, {tuple(wkv.shape)}, {tuple(ffn_shift.shape)} do not "
                             f"fit this model at batch {B}: expected ({L}, {B}, {C}) and ({L}, {B}, {H}, {N}, {N}); "
                             "start from model.init_state(batch).")
        logits = torch.empty(B, self.vocab_size)
        att_out, wkv_out, ffn_out = torch.empty_like(att_shift), torch.empty_like(wkv), torch.empty_like(ffn_shift)
        rc = self._fn(self._dims, self._pointers, B, tokens.data_ptr(), att_shift.data_ptr(), wkv.data_ptr(),
                      ffn_shift.data_ptr(), logits.data_ptr(), att_out.data_ptr(), wkv_out.data_ptr(), ffn_out.data_ptr())
        if rc != 0:
            bad = [t for t in tokens.tolist() if not 0 <= t < self.vocab_size]
            raise IndexError(f"token ids {bad} are outside the vocabulary (0..{self.vocab_size - 1})")
        return logits, att_out, wkv_out, ffn_out

"""The chunked CPU WKV7 backend against the reference loop (the executable spec).

Every comparison draws fresh random inputs shaped like the model's (sample_inputs) and checks
values, the final state and the gradients of all six inputs and of the initial state.
"""
from __future__ import annotations

import pytest
import torch

from engine.kernels.wkv7 import resolve_backend, wkv7
from engine.kernels.wkv7.chunked import CHUNK_SIZE, MAX_CHUNK_SIZE, wkv7_chunked
from engine.kernels.wkv7.reference import wkv7_reference
from engine.kernels.wkv7.sample_inputs import random_state, realistic_inputs

INPUT_NAMES = ("r", "w", "k", "v", "a", "b")


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def run_with_grads(fn, inputs, state0, cu_seqlens=None, seed=123, **kw):
    """y, final state and d(loss)/d(inputs, initial state) for a random linear loss of y and state."""
    leaves = {n: x.detach().clone().requires_grad_() for n, x in inputs.items()}
    s0 = None if state0 is None else state0.detach().clone().requires_grad_()
    y, final = fn(**leaves, initial_state=s0, output_final_state=True, cu_seqlens=cu_seqlens, **kw)
    g = torch.Generator().manual_seed(seed)
    y_weight = torch.randn(y.shape, generator=g, dtype=torch.float64)
    s_weight = torch.randn(final.shape, generator=g, dtype=torch.float64)
    loss = (y.double() * y_weight).sum() + (final.double() * s_weight).sum()
    wrt = list(leaves.values()) + ([s0] if s0 is not None else [])
    grads = torch.autograd.grad(loss, wrt)
    names = list(INPUT_NAMES) + (["initial_state"] if s0 is not None else [])
    return y, final, dict(zip(names, grads))


def assert_agree(got, want, tol):
    y, final, grads = got
    y_ref, final_ref, grads_ref = want
    errors = {"y": rel_err(y, y_ref), "final_state": rel_err(final, final_ref)}
    errors.update({f"d_{n}": rel_err(grads[n], grads_ref[n]) for n in grads_ref})
    bad = {n: e for n, e in errors.items() if not e < tol}
    assert not bad, f"relative errors above {tol:g}: {bad}"


@pytest.mark.parametrize(
    "B, T, H, N, chunk_size",
    [
        (2, 100, 2, 16, CHUNK_SIZE),  # T not a multiple of the chunk
        (1, 77, 2, 64, CHUNK_SIZE),
        (2, 45, 2, 16, 8),  # many chunks: state passing dominates
        (1, 70, 1, 16, MAX_CHUNK_SIZE),
        (3, 5, 2, 16, CHUNK_SIZE),  # shorter than one chunk
    ],
)
def test_chunked_matches_reference_fp64(B, T, H, N, chunk_size):
    seed = 1000 * T + N + chunk_size
    inputs = realistic_inputs(B, T, H, N, dtype=torch.float64, seed=seed)
    state0 = random_state(B, H, N, dtype=torch.float64, seed=seed + 1, scale=0.5)
    want = run_with_grads(wkv7_reference, inputs, state0)
    got = run_with_grads(wkv7_chunked, inputs, state0, chunk_size=chunk_size)
    assert_agree(got, want, 1e-8)


@pytest.mark.parametrize("with_state", [True, False])
def test_chunked_packed_sequences_fp64(with_state):
    # Uneven segments: single tokens, shorter than a chunk, exactly a chunk, longer than two.
    lengths = [1, 45, 7, CHUNK_SIZE, 1, 70, 13]
    cu_seqlens = torch.tensor([0] + lengths).cumsum(0)
    T, H, N = sum(lengths), 2, 16
    inputs = realistic_inputs(1, T, H, N, dtype=torch.float64, seed=7 + with_state)
    state0 = random_state(len(lengths), H, N, dtype=torch.float64, seed=8, scale=0.5) if with_state else None
    want = run_with_grads(wkv7_reference, inputs, state0, cu_seqlens=cu_seqlens)
    got = run_with_grads(wkv7_chunked, inputs, state0, cu_seqlens=cu_seqlens)
    assert_agree(got, want, 1e-8)


def test_packed_sequences_are_independent():
    # Each segment of a packed call equals the same sequence run alone (no state leaks across).
    lengths = [9, 40, 3]
    cu_seqlens = torch.tensor([0] + lengths).cumsum(0)
    H, N = 2, 16
    inputs = realistic_inputs(1, sum(lengths), H, N, dtype=torch.float64, seed=21)
    state0 = random_state(len(lengths), H, N, dtype=torch.float64, seed=22)
    y, final = wkv7_chunked(**inputs, initial_state=state0, output_final_state=True, cu_seqlens=cu_seqlens)
    for n, (s, e) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())):
        alone = {name: x[:, s:e] for name, x in inputs.items()}
        y_n, final_n = wkv7_chunked(**alone, initial_state=state0[n : n + 1], output_final_state=True)
        assert rel_err(y[:, s:e], y_n) < 1e-12
        assert rel_err(final[n : n + 1], final_n) < 1e-12


def test_state_carried_across_calls_equals_one_call():
    # Chunked prefill: two calls split mid-chunk, the second starting from the first's state.
    B, T, H, N, split = 2, 90, 2, 16, 37
    inputs = realistic_inputs(B, T, H, N, dtype=torch.float64, seed=31)
    state0 = random_state(B, H, N, dtype=torch.float64, seed=32)
    y, final = wkv7_chunked(**inputs, initial_state=state0, output_final_state=True)
    first = {n: x[:, :split] for n, x in inputs.items()}
    second = {n: x[:, split:] for n, x in inputs.items()}
    y1, mid = wkv7_chunked(**first, initial_state=state0, output_final_state=True)
    y2, end = wkv7_chunked(**second, initial_state=mid, output_final_state=True)
    assert rel_err(torch.cat((y1, y2), 1), y) < 1e-12
    assert rel_err(end, final) < 1e-12


def test_chunked_fp32_matches_fp64_reference_like_the_fp32_reference():
    B, T, H, N = 2, 150, 2, 64
    inputs = realistic_inputs(B, T, H, N, dtype=torch.float64, seed=41)
    state0 = random_state(B, H, N, dtype=torch.float64, seed=42)
    want = run_with_grads(wkv7_reference, inputs, state0)
    inputs32 = {n: x.float() for n, x in inputs.items()}
    got = run_with_grads(wkv7_chunked, inputs32, state0.float())
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    assert_agree(got, want, 2e-5)


def test_fp32_strongest_decay_longest_chunk():
    # All decays at their floor 0.545: over a 64-token chunk D falls to ~1e-17 and 1/D reaches
    # ~1e17, the fp32 range the chunk-size limit is built on. Values must still be accurate.
    B, T, H, N = 1, 192, 2, 32
    inputs = realistic_inputs(B, T, H, N, dtype=torch.float64, seed=51)
    inputs["w"] = torch.full_like(inputs["w"], 20.0)
    state0 = random_state(B, H, N, dtype=torch.float64, seed=52)
    y_ref, final_ref = wkv7_reference(**inputs, initial_state=state0, output_final_state=True)
    y, final = wkv7_chunked(
        **{n: x.float() for n, x in inputs.items()},
        initial_state=state0.float(),
        output_final_state=True,
        chunk_size=MAX_CHUNK_SIZE,
    )
    assert torch.isfinite(y).all() and torch.isfinite(final).all()
    assert rel_err(y, y_ref) < 2e-5 and rel_err(final, final_ref) < 2e-5


def test_bf16_inputs_compute_in_fp32():
    B, T, H, N = 2, 40, 2, 16
    inputs = realistic_inputs(B, T, H, N, dtype=torch.float32, seed=61)
    state0 = random_state(B, H, N, seed=62)
    inputs16 = {n: x.bfloat16().requires_grad_() for n, x in inputs.items()}
    y, final = wkv7_chunked(**inputs16, initial_state=state0, output_final_state=True)
    assert y.dtype == torch.bfloat16 and final.dtype == torch.float32
    (y.float().square().sum() + final.square().sum()).backward()
    for n, x in inputs16.items():
        assert x.grad is not None and x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all(), n
    # Same bf16-rounded inputs through the fp32 reference: only the output rounding differs.
    y_ref, final_ref = wkv7_reference(
        **{n: x.detach().float() for n, x in inputs16.items()}, initial_state=state0, output_final_state=True
    )
    assert rel_err(y, y_ref) < 1e-2
    assert rel_err(final, final_ref) < 1e-5


def test_non_contiguous_inputs():
    # The model hands over views of wider projections; strides must not matter.
    B, T, H, N = 2, 50, 2, 16
    inputs = realistic_inputs(B, T, H, N, dtype=torch.float64, seed=75)
    strided = {n: torch.cat((x, x), -1).transpose(1, 2).contiguous().transpose(1, 2)[..., :N] for n, x in inputs.items()}
    assert not any(x.is_contiguous() for x in strided.values())
    y, final = wkv7_chunked(**strided, output_final_state=True)
    y_ref, final_ref = wkv7_chunked(**inputs, output_final_state=True)
    assert torch.equal(y, y_ref) and torch.equal(final, final_ref)


def test_no_state_requested_returns_none_and_zero_state_start():
    inputs = realistic_inputs(1, 20, 2, 16, dtype=torch.float64, seed=71)
    y, final = wkv7_chunked(**inputs)
    assert final is None
    y_zero, _ = wkv7_chunked(**inputs, initial_state=torch.zeros(1, 2, 16, 16, dtype=torch.float64))
    assert torch.equal(y, y_zero)


def test_auto_backend_on_cpu_is_chunked():
    assert resolve_backend("auto", "cpu") == "chunked"
    inputs = realistic_inputs(2, 33, 2, 16, seed=81)
    state0 = random_state(2, 2, 16, seed=82)
    y_auto, s_auto = wkv7(**inputs, initial_state=state0, output_final_state=True, backend="auto")
    y_ch, s_ch = wkv7_chunked(**inputs, initial_state=state0, output_final_state=True)
    assert torch.equal(y_auto, y_ch) and torch.equal(s_auto, s_ch)


@pytest.mark.parametrize(
    "cu_seqlens, state_rows, message",
    [
        ([0, 3, 9], 2, "cu_seqlens must rise from 0 to the packed length 10"),
        ([0, 6, 4, 10], 3, "cu_seqlens must rise from 0"),
        ([0, 4, 10], 3, "initial_state must have shape (2, 2, 8, 8)"),
    ],
)
def test_bad_packing_is_one_clear_error(cu_seqlens, state_rows, message):
    inputs = realistic_inputs(1, 10, 2, 8, seed=91)
    with pytest.raises(ValueError) as err:
        wkv7_chunked(**inputs, initial_state=torch.zeros(state_rows, 2, 8, 8), cu_seqlens=torch.tensor(cu_seqlens))
    assert message in str(err.value)


@pytest.mark.parametrize("packed", [False, True])
def test_recompute_gives_the_same_values_and_gradients_and_saves_less(packed):
    """``recompute=True`` keeps only the inputs for backward (fresh inputs every run)."""
    from engine.kernels.wkv7 import wkv7
    from engine.kernels.wkv7.sample_inputs import random_state, realistic_inputs

    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    B, T, H, N = (1, 70, 2, 32) if packed else (2, 45, 2, 32)
    cu = torch.tensor([0, 20, 20, 70]) if packed else None
    n = 3 if packed else B
    results = []
    for recompute in (False, True):
        inputs = {k: t.requires_grad_() for k, t in realistic_inputs(B, T, H, N, seed=seed).items()}
        s0 = random_state(n, H, N, seed=seed + 1).requires_grad_()
        saved = []

        def pack(t):
            saved.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y, s = wkv7(**inputs, initial_state=s0, output_final_state=True, cu_seqlens=cu, backend="chunked",
                        recompute=recompute)
        (y.square().sum() + s.square().sum()).backward()
        grads = [inputs[k].grad for k in ("r", "w", "k", "v", "a", "b")] + [s0.grad]
        results.append((y.detach(), s.detach(), grads, sum(saved)))
    (y0, s0_, g0, bytes0), (y1, s1, g1, bytes1) = results
    assert torch.equal(y0, y1) and torch.equal(s0_, s1)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    inputs_bytes = 6 * B * T * H * N * 4 + n * H * N * N * 4
    assert bytes1 <= inputs_bytes * 1.05 < bytes0


def test_rwkv_cuda_on_0_forces_the_pytorch_path(monkeypatch, caplog):
    """RWKV_CUDA_ON=0 sends "auto" and "cuda" to the chunked backend, and the choice is logged.

    This machine has no GPU, so one is faked (torch.cuda.is_available and a built kernel) to show
    that "auto" would pick the CUDA kernel without the switch.
    """
    import logging

    import engine.kernels.wkv7 as dispatch
    from engine.kernels.wkv7 import cuda as cuda_backend

    monkeypatch.setattr(dispatch, "_announced", set())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda_backend, "is_available", lambda: True)
    monkeypatch.delenv("RWKV_CUDA_ON", raising=False)
    assert resolve_backend("auto", "cuda") == "cuda"
    assert resolve_backend("auto", "cpu") == "chunked"
    # "auto" takes the CUDA kernel only for a head size it is compiled for
    assert resolve_backend("auto", "cuda", head_size=64) == "cuda"
    assert dispatch.explain_backend("auto", "cuda", head_size=32) == (
        "chunked", "the CUDA kernels are compiled for head size 64, not 32")
    monkeypatch.setenv("RWKV_CUDA_ON", "0")
    with caplog.at_level(logging.INFO, logger="engine.kernels.wkv7"):
        assert resolve_backend("auto", "cuda") == "chunked"
        assert resolve_backend("cuda", "cuda") == "chunked"
        resolve_backend("auto", "cuda")  # logged once per request and device type, not per layer
    lines = [r.getMessage() for r in caplog.records if "RWKV_CUDA_ON=0" in r.getMessage()]
    assert lines == ["WKV7 backend 'auto' on cuda runs chunked (RWKV_CUDA_ON=0 forces the PyTorch path)",
                     "WKV7 backend 'cuda' on cuda runs chunked (RWKV_CUDA_ON=0 forces the PyTorch path)"]
    # a real call asking for the CUDA kernel runs the PyTorch operator instead
    inputs = realistic_inputs(1, 20, 2, 16, seed=95)
    y, s = wkv7(**inputs, output_final_state=True, backend="cuda")
    y_ref, s_ref = wkv7_chunked(**inputs, output_final_state=True)
    assert torch.equal(y, y_ref) and torch.equal(s, s_ref)
    with pytest.raises(ValueError, match="unknown WKV7 backend 'triton'"):
        resolve_backend("triton", "cpu")

"""The model's CUDA paths against the plain ones, fresh random weights and tokens (needs a GPU):
the CUDA-graph RNN step against the eager step, and the compiled block parts against eager ones
under bf16 autocast (the trainer's default on CUDA), values and every gradient."""
from __future__ import annotations

import copy

import pytest
import torch

from engine.model import RWKV7, ModelConfig

pytestmark = pytest.mark.gpu


def _model(arch="x080", L=3, C=256, V=300, seed=None):
    torch.manual_seed(seed if seed is not None else torch.seed() % 2**31)
    return RWKV7(ModelConfig(arch=arch, n_layer=L, n_embd=C, vocab_size=V, head_size=64)).cuda()


@pytest.mark.parametrize("batch", [1, 5])
def test_graphed_step_equals_eager_step_and_keeps_caller_states(batch):
    model = _model().eval()
    eager = copy.deepcopy(model)
    eager.rnn_trace = False
    tokens = torch.randint(0, 300, (12, batch), device="cuda")
    with torch.inference_mode():
        s_graph, s_eager = model.init_state(batch), eager.init_state(batch)
        kept = []
        for t in tokens:
            lg, s_graph = model.step(t, s_graph)
            le, s_eager = eager.step(t, s_eager)
            kept.append((s_graph.wkv.clone(), s_graph))
            torch.testing.assert_close(lg, le, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(s_graph.wkv, s_eager.wkv, rtol=1e-4, atol=1e-5)
        # a state the caller kept (a bar snapshot) is never overwritten by later replays
        for copy_before, state in kept:
            assert torch.equal(copy_before, state.wkv)
    assert any(k[0] == "graph" for k in model._rnn_traces), "the step was not graph-captured"


@pytest.mark.parametrize("arch, dtype, tol", [("x070", torch.float32, 1e-4), ("x080", torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("compiled", [False, True])
def test_graphed_step_over_the_batched_layout_equals_eager(arch, dtype, tol, compiled):
    """The batched one-token layout (in-place low-rank activations, broadcast baddbmm, fused
    residual adds) captures as a CUDA graph, plain and torch.compile'd, at batch > 1, for both
    architectures and in bf16 weights, and equals the eager step with its state carried."""
    torch._dynamo.reset()
    model = _model(arch=arch, L=2, C=128).to(dtype).eval()
    model.rnn_compile = compiled
    eager = copy.deepcopy(model)
    eager.rnn_trace = False
    tokens = torch.randint(0, 300, (6, 3), device="cuda")
    with torch.inference_mode():
        s_graph, s_eager = model.init_state(3), eager.init_state(3)
        for t in tokens:
            lg, s_graph = model.step(t, s_graph)
            le, s_eager = eager.step(t, s_eager)
            err = float((lg.float() - le.float()).abs().max() / le.float().abs().max())
            assert err < tol, err
        err = float((s_graph.wkv - s_eager.wkv).abs().max() / s_eager.wkv.abs().max())
        assert err < tol, err
    assert any(k[0] == "graph" and k[-1] == compiled for k in model._rnn_traces), "the step was not graph-captured"


def test_graph_is_rebuilt_after_the_weights_change():
    model = _model(L=2, C=128).eval()
    tok = torch.tensor([7], device="cuda")
    with torch.inference_mode():
        before, _ = model.step(tok, model.init_state(1))
    with torch.no_grad():
        model.head.weight.mul_(2.0)
    with torch.inference_mode():
        after, _ = model.step(tok, model.init_state(1))
    torch.testing.assert_close(after, 2 * before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("packed", [False, True])
def test_compiled_block_parts_equal_eager_under_bf16_autocast(packed):
    torch._dynamo.reset()
    model = _model(L=3, C=256, V=300).train()
    compiled = copy.deepcopy(model).compile_blocks()
    B, T = (1, 200) if packed else (3, 130)
    idx = torch.randint(0, 300, (B, T), device="cuda")
    cu = torch.tensor([0, 50, 50, 131, 200], device="cuda") if packed else None
    grads, outs = [], []
    for m in (model, compiled):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = m(idx, cu_seqlens=cu)
        loss = logits.float().logsumexp(-1).mean()
        loss.backward()
        outs.append(logits.float())
        grads.append({n: p.grad.float() for n, p in m.named_parameters() if p.grad is not None})
    rel = (outs[0] - outs[1]).norm() / outs[0].norm()
    assert rel < 2e-2, rel  # both bf16; inductor orders the sums differently
    for name, g in grads[0].items():
        err = (g - grads[1][name]).norm() / g.norm().clamp_min(1e-12)
        assert err < 5e-2, (name, float(err))


def test_bf16_autocast_forward_stays_close_to_fp32():
    model = _model(L=4, C=256, V=300).eval()
    idx = torch.randint(0, 300, (2, 300), device="cuda")
    with torch.no_grad():
        ref = model(idx).float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(idx).float()
    assert ((low - ref).norm() / ref.norm()) < 3e-2

"""The model's CUDA paths against the plain ones, fresh random weights and tokens (needs a GPU):
the CUDA-graph RNN step (with its Triton kernels where Triton imports) against the
plain eager PyTorch step, the GPU sampler against the reference sampler, the bf16 weight cache
(the CUDA default) against fp32, and the compiled block parts against eager ones under bf16 autocast (the trainer's
default on CUDA), values and every gradient."""
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
    model.rnn_weight_dtype = torch.float32  # the runners compared at fp32 rounding (the default cache is bf16)
    eager = copy.deepcopy(model)
    eager.rnn_trace = False
    eager.rnn_triton = False  # the plain PyTorch step: the reference for the graphed (and fused) one
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
    model.rnn_weight_dtype = None  # the cache in the parameters' dtype, as the reference's
    eager = copy.deepcopy(model)
    eager.rnn_trace = False
    eager.rnn_triton = False  # the plain PyTorch step: the reference for the graphed (and fused) one
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


def _triton_or_skip():
    from engine.kernels import rnn_triton

    if not rnn_triton.available("cuda"):
        pytest.skip("triton is not installed: the step stays in PyTorch")


@pytest.mark.parametrize("arch", ["x070", "x080"])
@pytest.mark.parametrize("batch", [1, 4])
def test_triton_step_equals_the_pytorch_step(arch, batch):
    """The Triton kernels compiled for the GPU, eager and inside the captured graph, against the
    PyTorch step from a random carried state (the CPU interpreter test's cases, on the device)."""
    _triton_or_skip()
    model = _model(arch=arch, L=3, C=256)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    model.rnn_weight_dtype = torch.float32  # the kernels compared at fp32 rounding (the default cache is bf16)
    plain = copy.deepcopy(model)
    plain.rnn_trace, plain.rnn_triton = False, False
    eager_fused = copy.deepcopy(model)
    eager_fused.rnn_trace = False
    tokens = torch.randint(0, 300, (8, batch), device="cuda")
    with torch.inference_mode():
        start = model.init_state(batch)
        start.wkv.normal_(0, 0.5)
        states = [start] * 3
        for t in tokens:
            outs = [m.step(t, s) for m, s in zip((plain, eager_fused, model), states)]
            states = [o[1] for o in outs]
            for logits, state in outs[1:]:  # fp32 throughout: equal but for rounding, relative to each tensor's scale
                for got, ref in ((logits, outs[0][0]), (state.wkv, outs[0][1].wkv), (state.att_shift, outs[0][1].att_shift)):
                    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-4
    assert any(k[0] == "graph" and k[5] for k in model._rnn_traces), "the graphed step did not use the Triton kernels"


def test_gpu_sampler_picks_the_reference_token():
    """sample_rows on CUDA (pick_tokens replayed from a captured graph) against pick_tokens run
    eagerly on the GPU (equal) and the reference (filter_logits and the inverse CDF on the CPU
    copy, equal but for rare rows whose uniform falls within rounding of a CDF step)."""
    from engine.generate.sampling import SamplingConfig, filter_logits, inverse_cdf, pick_tokens, row_uniforms, sample_rows, sampling_knobs

    settings = [SamplingConfig(), SamplingConfig(temperature=0.7, top_k=20, top_p=0.9), SamplingConfig(temperature=1.3, top_p=0.5, min_p=0.05),
                SamplingConfig(temperature=0), SamplingConfig(temperature=1e-4, top_p=1.0)]
    total = same_as_cpu = 0
    for seed in range(60):
        g = torch.Generator().manual_seed(seed)
        logits = (torch.randn(8, 512, generator=g) * 3).cuda()
        allowed = (torch.rand(8, 512, generator=g) < 0.7).cuda()
        allowed[:, 0] = True
        config = settings[seed % len(settings)]
        gens = [torch.Generator().manual_seed(seed * 10 + r) for r in range(8)]
        u = row_uniforms([torch.Generator().manual_seed(seed * 10 + r) for r in range(8)], config)
        got = sample_rows(logits, allowed, config, gens, [[]] * 8)
        assert got == pick_tokens(logits, allowed, u.cuda(), sampling_knobs(config, "cuda")).tolist()
        assert bool(allowed[torch.arange(8, device="cuda"), torch.tensor(got, device="cuda")].all())
        cpu = filter_logits(logits.cpu(), allowed.cpu(), config)
        ref = cpu.argmax(-1) if config.temperature == 0 else inverse_cdf(torch.softmax(cpu, -1), u)
        same_as_cpu += sum(a == b for a, b in zip(got, ref.tolist()))
        total += 8
    assert same_as_cpu >= 0.99 * total, (same_as_cpu, total)


def _assert_within_the_bf16_tolerance(fp32, model, dtype):
    """32 steps of two sequences: ``model``'s logits (in ``dtype``) within 4 % of the fp32 cache's
    scale and its next-token distributions within 0.02 total variation at every step, the WKV
    state fp32 and within 4 % (the tolerance of tests/unit/test_model_rnn_dtype.py)."""
    tokens = torch.randint(0, 300, (32, 2), device="cuda")
    with torch.inference_mode():
        s_ref, s_got = fp32.init_state(2), model.init_state(2)
        for t in tokens:
            ref, s_ref = fp32.step(t, s_ref)
            got, s_got = model.step(t, s_got)
            assert got.dtype == dtype and s_got.wkv.dtype == torch.float32
            assert float((got.float() - ref).abs().max()) < 0.04 * float(ref.abs().max())
            tv = (torch.softmax(got.float(), -1) - torch.softmax(ref, -1)).abs().sum(-1).max() / 2
            assert float(tv) < 0.02
    assert float((s_got.wkv - s_ref.wkv).abs().max()) < 0.04 * float(s_ref.wkv.abs().max())


def test_bf16_weight_cache_on_the_gpu_stays_near_fp32():
    model = _model(L=3, C=256).eval()
    model.rnn_weight_dtype = torch.float32  # the user's choice of fp32 on a GPU
    half = copy.deepcopy(model)
    half.rnn_weight_dtype = torch.bfloat16
    _assert_within_the_bf16_tolerance(model, half, torch.bfloat16)
    assert any(k[0] == "graph" and k[2] == torch.bfloat16 for k in half._rnn_traces)
    assert all(k[2] == torch.float32 for k in model._rnn_traces), "torch.float32 should keep the cache fp32"


@pytest.mark.parametrize("arch", ["x070", "x080"])
def test_the_default_on_cuda_is_the_bf16_weight_cache_within_tolerance_of_fp32(arch):
    """model.rnn_weight_dtype "auto" (the default) on CUDA with the Triton step: the graphed step
    over a bf16 weight cache within the stated tolerance of the fp32 cache; without Triton the
    default stays fp32."""
    from engine.kernels import rnn_triton

    model = _model(arch=arch, L=3, C=256)
    with torch.no_grad():
        for p in model.parameters():  # off the zero inits, so every weight matters
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    fp32 = copy.deepcopy(model)
    fp32.rnn_weight_dtype = torch.float32
    assert model.rnn_weight_dtype == "auto"
    want = torch.bfloat16 if rnn_triton.available("cuda") else torch.float32
    assert model.rnn_weight_cache_dtype() == want
    _assert_within_the_bf16_tolerance(fp32, model, want)
    graphs = [k for k in model._rnn_traces if k[0] == "graph"]
    assert graphs and all(k[2] == want and k[5] == (want == torch.bfloat16) for k in graphs), graphs

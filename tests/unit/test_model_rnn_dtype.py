"""RNN mode's weight cache in bf16 over fp32 parameters (``model.rnn_weight_dtype``, an option
for the GPU step: half the weight bytes a step reads), against the fp32 step over 32 tokens on
fresh random weights. The stated tolerance: every step's logits within 4 % of their scale, and
the next-token distributions within 0.02 total variation (what sampling sees); the WKV state
stays fp32 and within 4 %."""
from __future__ import annotations

import copy

import pytest
import torch

from engine.model import RWKV7, ModelConfig

LOGIT_TOL, TV_TOL, STATE_TOL = 0.04, 0.02, 0.04


@pytest.mark.parametrize("arch", ["x070", "x080"])
def test_bf16_weight_cache_stays_within_the_stated_tolerance_of_fp32(arch):
    torch.manual_seed(torch.seed() % 2**31)
    model = RWKV7(ModelConfig(arch=arch, n_layer=2, n_embd=128, vocab_size=300))
    with torch.no_grad():  # off the zero inits, so every weight matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    model.rnn_trace = False  # the eager step: the cache's dtype is what is under test, not the runner
    half = copy.deepcopy(model)
    half.rnn_weight_dtype = torch.bfloat16
    tokens = torch.randint(0, 300, (32, 2))
    with torch.inference_mode():
        s_ref, s_half = model.init_state(2), half.init_state(2)
        for t in tokens:
            ref, s_ref = model.step(t, s_ref)
            got, s_half = half.step(t, s_half)
            assert got.dtype == torch.bfloat16 and s_half.wkv.dtype == torch.float32
            assert float((got.float() - ref).abs().max()) < LOGIT_TOL * float(ref.abs().max())
            tv = (torch.softmax(got.float(), -1) - torch.softmax(ref, -1)).abs().sum(-1).max() / 2
            assert float(tv) < TV_TOL
    assert float((s_half.wkv - s_ref.wkv).abs().max()) < STATE_TOL * float(s_ref.wkv.abs().max())
    with torch.no_grad():
        assert model._rnn_weights()[1][0].att.RKV.dtype == torch.float32  # the fp32 model's cache is untouched
        assert half._rnn_weights()[1][0].att.RKV.dtype == torch.bfloat16


@pytest.mark.parametrize("param_dtype, device, triton_step, want", [
    (torch.float32, "cuda", True, torch.bfloat16),  # the GPU default: bf16 cache over fp32 weights, Triton step
    (torch.float32, "cuda:1", True, torch.bfloat16),
    (torch.float32, "cuda", False, torch.float32),  # the PyTorch step (no Triton, traced, compiled): measured slower in bf16
    (torch.float32, "cpu", True, torch.float32),  # the CPU default stays fp32 (the fused C++ step)
    (torch.float32, "cpu", False, torch.float32),
    (torch.bfloat16, "cuda", True, torch.bfloat16),  # other parameter dtypes keep theirs
    (torch.float16, "cuda", True, torch.float16),
    (torch.float64, "cuda", True, torch.float64),
])
def test_auto_weight_dtype_is_bf16_on_cuda_with_the_triton_step_else_the_parameters_dtype(param_dtype, device, triton_step, want):
    from engine.model.recurrent import auto_rnn_weight_dtype

    assert auto_rnn_weight_dtype(param_dtype, torch.device(device), triton_step) == want


def test_the_weight_cache_takes_the_resolved_dtype_and_auto_is_the_default(monkeypatch):
    """The model asks the one resolver (with whether its step runs the Triton kernels) and its
    cache follows the answer; on the CPU the default cache stays fp32; None and torch.float32
    choose the parameters' fp32; anything else is one clear error."""
    from engine.model import recurrent

    model = RWKV7(ModelConfig(arch="x080", n_layer=2, n_embd=64, vocab_size=50)).eval()
    assert model.rnn_weight_dtype == "auto"
    with torch.inference_mode():
        model.step(torch.tensor([3]), model.init_state(1))
        assert model.rnn_weight_cache_dtype() == torch.float32
    with torch.no_grad():
        assert model._rnn_weights()[1][0].att.RKV.dtype == torch.float32

    asked = []

    def resolver(param_dtype, device, triton_step):
        asked.append((param_dtype, device.type, triton_step))
        return torch.bfloat16  # what "auto" gives on CUDA with the Triton step

    monkeypatch.setattr(recurrent, "auto_rnn_weight_dtype", resolver)
    monkeypatch.setattr(recurrent.RecurrentMode, "_triton_on", lambda self, device: self.rnn_triton)  # as on CUDA
    with torch.inference_mode():
        logits, state = model.step(torch.tensor([3]), model.init_state(1))
    assert logits.dtype == torch.bfloat16 and state.wkv.dtype == torch.float32
    with torch.no_grad():
        assert model._rnn_weights()[1][0].att.RKV.dtype == torch.bfloat16
    assert asked[-1] == (torch.float32, "cpu", True)
    model.rnn_trace = False  # the eager step runs the Triton kernels too
    model.rnn_weight_cache_dtype()
    assert asked[-1][2] is True
    model.rnn_trace, model.rnn_cuda_graph = True, False  # the traced step never does
    model.rnn_weight_cache_dtype()
    assert asked[-1][2] is False
    model.rnn_cuda_graph, model.rnn_compile = True, True  # nor the compiled one (its own kernels)
    model.rnn_weight_cache_dtype()
    assert asked[-1][2] is False
    model.rnn_compile, model.rnn_triton = False, False
    model.rnn_weight_cache_dtype()
    assert asked[-1][2] is False

    for fp32 in (None, torch.float32):
        model.rnn_weight_dtype = fp32
        with torch.inference_mode():
            logits, _ = model.step(torch.tensor([3]), model.init_state(1))
        assert logits.dtype == torch.float32
    model.rnn_weight_dtype = "bf16"
    with pytest.raises(ValueError, match="rnn_weight_dtype must be 'auto', None .* or a floating torch dtype"):
        with torch.inference_mode():
            model.step(torch.tensor([3]), model.init_state(1))

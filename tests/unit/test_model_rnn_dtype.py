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

"""The traced RNN step (no autograd) computes exactly what the eager step computes."""
from __future__ import annotations

import pytest
import torch

from model_helpers import perturbed_model, rel_err


@pytest.mark.parametrize("arch", ["x070", "x080"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.slow
def test_traced_step_equals_eager_step(arch, batch):
    model = perturbed_model(arch=arch, n_layer=3)
    tokens = torch.randint(0, model.config.vocab_size, (6, batch), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        traced_state, eager_state = model.init_state(batch), model.init_state(batch)
        for row in tokens:
            model.rnn_trace = True
            traced_logits, traced_state = model.step(row, traced_state)
            model.rnn_trace = False
            eager_logits, eager_state = model.step(row, eager_state)
            # TorchScript runs addmm as mm + add (its DecomposeOps pass): one more rounding
            torch.testing.assert_close(traced_logits, eager_logits, rtol=1e-5, atol=1e-5)
    assert model._rnn_traces, "the no-autograd step should have run as a trace"
    for traced, eager in zip(traced_state.layer(0), eager_state.layer(0)):
        torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_trace_is_dropped_when_the_weights_change():
    model = perturbed_model(n_layer=2)
    tokens = torch.tensor([3, 7])
    with torch.no_grad():
        before, _ = model.step(tokens, model.init_state(2))
        model.head.weight.mul_(2.0)  # an in-place update, like an optimizer step
        after, _ = model.step(tokens, model.init_state(2))
        model.rnn_trace = False
        eager, _ = model.step(tokens, model.init_state(2))
    torch.testing.assert_close(after, eager, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)


def test_step_with_autograd_matches_and_backpropagates_into_the_state():
    model = perturbed_model(n_layer=2)
    tokens = torch.tensor([1, 2])
    state = model.init_state(2)
    state.wkv.requires_grad_(True)
    logits, new_state = model.step(tokens, state)  # eager, on the live parameters
    (logits.square().sum() + new_state.wkv.sum()).backward()
    assert state.wkv.grad is not None and state.wkv.grad.abs().sum() > 0
    assert model.head.weight.grad is not None
    with torch.no_grad():
        traced, _ = model.step(tokens, model.init_state(2))
    assert rel_err(traced, logits) < 1e-5


def test_step_under_autocast_is_traced_in_the_weights_dtype():
    """A training audition calls the step under bf16 autocast with fp32 master weights and bf16
    shift states from the autocast prefill: the trace must build (no dtype clash, no warning) and
    compute the fp32 step."""
    import warnings

    model = perturbed_model(arch="x080", n_layer=2)
    model.rnn_fused = False  # the PyTorch trace is what runs on CUDA
    prompt = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, state = model(prompt, return_state=True)
            assert state.att_shift.dtype == torch.bfloat16
            logits, after = model.step(torch.tensor([9]), state)
        plain, _ = model.step(torch.tensor([9]), state.to(dtype=torch.float32))
    assert model.rnn_trace and model._rnn_traces, "the step should have run as a trace"
    assert logits.dtype == torch.float32 and after.att_shift.dtype == torch.float32
    torch.testing.assert_close(logits, plain, rtol=1e-6, atol=1e-6)

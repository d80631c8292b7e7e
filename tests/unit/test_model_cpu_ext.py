"""The fused C++ CPU RNN step (engine.model.cpu_ext) computes what the eager PyTorch step computes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.kernels.build import find_cxx
from engine.model import RWKVState, cpu_ext
from model_helpers import perturbed_model, rel_err

needs_compiler = pytest.mark.skipif(find_cxx() is None, reason="no C++ compiler on PATH: the fused CPU step cannot be built here")

REPO = Path(__file__).resolve().parents[2]


def fused_model(arch):
    # backend "auto": the "reference" backend pins a model to the PyTorch step; unequal low ranks:
    # the C++ reads each low-rank matrix unpadded out of the step's zero-padded stacks
    return perturbed_model(arch=arch, n_layer=3, n_embd=128, vocab_size=97, head_size=32, backend="auto", seed=3,
                           dim_w=32, dim_a=16, dim_v=8, dim_g=48)


@pytest.fixture(autouse=True)
def _switch_on(monkeypatch):
    monkeypatch.delenv(cpu_ext.ENV_SWITCH, raising=False)


@needs_compiler
@pytest.mark.parametrize("arch", ["x070", "x080"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.slow
def test_fused_step_equals_eager_step(arch, batch):
    model = fused_model(arch)
    tokens = torch.randint(0, model.config.vocab_size, (24, batch), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fused_state, eager_state = model.init_state(batch), model.init_state(batch)
        for row in tokens:  # each path carries its own state: errors would compound over the 24 steps
            model.rnn_trace = True
            before = fused_state.clone()
            fused_logits, new_fused = model.step(row, fused_state)
            assert model._rnn_fused is not None and not model._rnn_traces, "the fused step should have run"
            for old, kept in zip((before.att_shift, before.wkv, before.ffn_shift),
                                 (fused_state.att_shift, fused_state.wkv, fused_state.ffn_shift)):
                assert torch.equal(old, kept), "the step must not modify the state it was given"
            model.rnn_trace = False
            eager_logits, eager_state = model.step(row, eager_state)
            fused_state = new_fused
            assert rel_err(fused_logits, eager_logits) < 1e-5
            for name in ("att_shift", "wkv", "ffn_shift"):
                assert rel_err(getattr(fused_state, name), getattr(eager_state, name)) < 1e-5, name
    # the recurrence really ran: the WKV state is far from zero after 24 tokens
    assert eager_state.wkv.abs().max() > 0.1


@needs_compiler
def test_fused_step_follows_weight_updates_and_rejects_bad_tokens():
    model = fused_model("x080")
    tokens = torch.tensor([3, 7])
    with torch.no_grad():
        before, _ = model.step(tokens, model.init_state(2))
        model.blocks[1].ffn.value.weight.mul_(1.5)  # an in-place update, like an optimizer step
        after, _ = model.step(tokens, model.init_state(2))
        model.rnn_trace = False
        eager, _ = model.step(tokens, model.init_state(2))
        model.rnn_trace = True
        with pytest.raises(IndexError, match="outside the vocabulary"):
            model.step(torch.tensor([3, 97]), model.init_state(2))
        with pytest.raises(ValueError, match="start from model.init_state"):  # a 2-layer state for 3 layers
            model.step(tokens, RWKVState.zeros(2, 2, 128, 32))
    assert model._rnn_fused is not None
    assert rel_err(after, eager) < 1e-5
    assert rel_err(before, after) > 1e-3


@pytest.mark.slow
def test_switched_off_by_env_keeps_the_traced_step(monkeypatch):
    monkeypatch.setenv(cpu_ext.ENV_SWITCH, "0")
    model = fused_model("x070")
    tokens = torch.tensor([5])
    with torch.inference_mode():
        logits, _ = model.step(tokens, model.init_state(1))
        model.rnn_trace = False
        eager, _ = model.step(tokens, model.init_state(1))
    assert model._rnn_fused is None and model._rnn_traces, "PIANOMUSE_CPU_EXT=0 should leave the traced step"
    assert rel_err(logits, eager) < 1e-5  # TorchScript runs addmm as mm + add: one more rounding


@pytest.mark.slow
def test_missing_compiler_warns_once_and_falls_back(tmp_path):
    # a fresh process with no compiler on PATH and an empty build cache: one loud warning, then
    # the traced PyTorch step, with the same numbers as eager mode
    script = (
        "import warnings, torch, sys\n"
        f"sys.path.insert(0, {str(REPO / 'tests' / 'unit')!r})\n"
        "from model_helpers import perturbed_model, rel_err\n"
        "m = perturbed_model(backend='auto')\n"
        "with warnings.catch_warnings(record=True) as caught, torch.inference_mode():\n"
        "    warnings.simplefilter('always')\n"
        "    a, s = m.step(torch.tensor([4]), m.init_state(1))\n"
        "    a, s = m.step(torch.tensor([9]), s)\n"
        "    m.rnn_trace = False\n"
        "    b, t = m.step(torch.tensor([4]), m.init_state(1))\n"
        "    b, t = m.step(torch.tensor([9]), t)\n"
        "mine = [w for w in caught if 'fused CPU RNN step unavailable' in str(w.message)]\n"
        "print(len(mine), m.rnn_fused, bool(m._rnn_traces), rel_err(a, b) < 1e-6)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CXX"}
    env.update(PATH=str(tmp_path), PIANOMUSE_KERNEL_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    env.pop(cpu_ext.ENV_SWITCH, None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "False", "True", "True"], out.stdout + out.stderr
    assert "no C++ compiler" in out.stderr

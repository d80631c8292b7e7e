"""The RNN step's Triton kernels (engine.kernels.rnn_triton: LN + token-shift mixes, the low-rank
activations, the TimeMix tail with the WKV update, relu^2) against the plain PyTorch step they
replace, on fresh random weights, inputs and states: the step's logits and every part of the new
state, x070 and x080, batch 1 and 4, layer 0 (which defines v_first) and the layers after it,
fp32 and bf16 weights. The kernels run under Triton's interpreter on the CPU,
in a child process: Triton reads TRITON_INTERPRET when it is first imported, and other tests
(torch.compile's) may have imported it already. Skipped only where Triton is not installed;
tests/integration/test_model_gpu.py runs the same cases compiled on a GPU."""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.model import RWKV7, ModelConfig

ROOT = Path(__file__).resolve().parents[2]
# (arch, batch, weights, width): 192 is not a power of two (the LayerNorm kernel's masked lanes, as at D768)
CASES = [("x070", 1, "fp32", 128), ("x070", 4, "fp32", 128), ("x080", 1, "fp32", 128), ("x080", 4, "fp32", 128),
         ("x080", 2, "bf16", 128), ("x070", 3, "fp32", 192)]


def random_model(arch: str, dtype=torch.float32, L=2, C=128, V=50, device="cpu"):
    torch.manual_seed(torch.seed() % 2**31)
    model = RWKV7(ModelConfig(arch=arch, n_layer=L, n_embd=C, vocab_size=V, head_size=64))
    with torch.no_grad():  # off the zero inits, so every term of the tail does real work
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.to(device=device, dtype=dtype).eval()


def run_steps(model, tokens, state, fused: bool):
    pack = model._rnn_weights()
    logits = []
    for t in tokens:
        lg, att, wkv, ffn = model._step_layers(pack, t, state.att_shift, state.wkv, state.ffn_shift, fused)
        state = type(state)(att, wkv, ffn)
        logits.append(lg)
    return torch.stack(logits), state


def check_case(arch: str, batch: int, dtype: str, C: int = 128, device: str = "cpu") -> None:
    """The fused step against the PyTorch step over three tokens from a random carried state.
    fp32: equal to 1e-4. bf16 weights (fp32 state): the kernel computes in fp32 where the
    PyTorch step rounds each op to bf16, so they agree to bf16's precision (3 % of the scale)."""
    model = random_model(arch, torch.float32 if dtype == "fp32" else torch.bfloat16, C=C, device=device)
    tokens = torch.randint(0, 50, (3, batch), device=device)
    with torch.inference_mode():
        start = model.init_state(batch)
        start.wkv.normal_(0, 0.5)  # a state carried from earlier tokens
        start.att_shift.normal_()
        start.ffn_shift.normal_()
        ref_logits, ref = run_steps(model, tokens, start, fused=False)
        got_logits, got = run_steps(model, tokens, start, fused=True)
    pairs = [("logits", got_logits, ref_logits)] + [(n, getattr(got, n), getattr(ref, n)) for n in ("att_shift", "wkv", "ffn_shift")]
    for name, a, b in pairs:
        if dtype == "fp32":
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)
        else:
            err = float((a.float() - b.float()).abs().max()) / float(b.float().abs().max())
            assert err < 0.03, f"{name}: {err}"
    assert float((got.wkv - start.wkv).abs().max()) > 1e-2  # the state moved


@pytest.fixture(scope="module")
def interpreted():
    """Every case run once in a child process under TRITON_INTERPRET=1: {case: error or ""}."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("the fused tail's test needs triton (pip install triton)")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_triton_step_equals_the_pytorch_step(interpreted, case):
    assert interpreted["-".join(map(str, case))] == ""


def test_the_cpu_step_never_picks_the_kernel_and_a_bad_head_size_says_so():
    model = random_model("x070")
    assert not model._triton_on(torch.device("cpu"))  # CPU behaviour unchanged
    from engine.kernels.rnn_triton import time_mix_tail

    W = model._rnn_weights()[1][1].att
    with pytest.raises(ValueError, match="power-of-two head size"):
        time_mix_tail(torch.zeros(3, 1, 96), torch.zeros(4, 1, 96), None, torch.zeros(1, 2, 48, 48), W, 2, 48, 1e-3)


def test_a_failing_triton_kernel_falls_back_to_the_pytorch_step_once(monkeypatch):
    """A Triton that cannot compile for the GPU must not stop a take: the step warns once, turns
    ``rnn_triton`` off and gives the PyTorch step's result (the kernel made to fail here)."""
    from engine.kernels import rnn_triton
    from engine.model.recurrent import RecurrentMode

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image for this device")

    model = random_model("x080")
    model.rnn_trace = False
    reference = copy.deepcopy(model)
    reference.rnn_triton = False
    monkeypatch.setattr(RecurrentMode, "_triton_on", lambda self, device: self.rnn_triton)  # as on CUDA
    monkeypatch.setattr(rnn_triton, "layer_norm_mix", broken)
    with torch.inference_mode():
        with pytest.warns(RuntimeWarning, match="Triton kernels failed, using the PyTorch step: RuntimeError: no kernel image"):
            got, _ = model.step([3], model.init_state(1))
        ref, _ = reference.step([3], reference.init_state(1))
    assert model.rnn_triton is False
    torch.testing.assert_close(got, ref)


def test_without_triton_the_model_imports_and_steps_in_pytorch():
    code = ("import sys; sys.modules['triton'] = None\n"  # as if not installed
            "import torch\nfrom engine.kernels import rnn_triton\nfrom engine.model import RWKV7, ModelConfig\n"
            "assert not rnn_triton.available('cuda')\n"
            "m = RWKV7(ModelConfig(n_layer=2, n_embd=128, vocab_size=50)).eval()\n"
            "with torch.no_grad(): print(tuple(m.step([1], m.init_state(1))[0].shape))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.strip() == "(1, 50)", done.stderr[-2000:]


if __name__ == "__main__":  # the child process of ``interpreted``
    results = {}
    for case in CASES:
        try:
            check_case(*case)
            results["-".join(map(str, case))] = ""
        except AssertionError as err:
            results["-".join(map(str, case))] = str(err)[:2000]
    print(json.dumps(results))

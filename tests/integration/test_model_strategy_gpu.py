"""engine.PianoMuseRWKV with the "cuda fp32" and "cuda bf16" strategies (needs a GPU): the same
checkpoint gives the CPU's logits, RNN steps agree with parallel mode, the WKV state stays fp32."""
from __future__ import annotations

import pytest
import torch

from engine import PianoMuseRWKV
from engine.model import RWKV7, ModelConfig, save_checkpoint

pytestmark = pytest.mark.gpu


def _rel_err(a, b) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(3)
    model = RWKV7(ModelConfig(arch="x080", n_layer=2, n_embd=128, vocab_size=200, head_size=64))
    with torch.no_grad():
        for p in model.parameters():  # off the init, so every term of the block matters
            p.add_(torch.randn_like(p) * 0.05)
    return save_checkpoint(model, tmp_path_factory.mktemp("strategy") / "muse")


# "cuda fp32" on the chunked operator is fp32 throughout; "auto" may pick the CUDA kernel, whose
# inputs are bf16, so it is held to the bf16 tolerance
@pytest.mark.parametrize("strategy, backend, tol", [("cuda fp32", "chunked", 1e-4), ("cuda fp32", "auto", 0.05),
                                                    ("cuda bf16", "auto", 0.05)])
def test_cuda_strategies_match_the_cpu(checkpoint, strategy, backend, tol):
    cpu = PianoMuseRWKV(checkpoint, "cpu fp32", wkv_backend="reference")
    gpu = PianoMuseRWKV(checkpoint, strategy, wkv_backend=backend)
    assert gpu.model.emb.weight.device.type == "cuda"
    assert gpu.model.emb.weight.dtype == (torch.bfloat16 if strategy.endswith("bf16") else torch.float32)
    ids = torch.randint(0, 200, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = cpu(ids)
        got, state = gpu.model(ids.cuda(), return_state=True)
    assert _rel_err(got, want) < tol
    assert state.wkv.dtype == torch.float32 and state.wkv.device.type == "cuda"
    # RNN mode on the GPU follows the GPU's own parallel mode token by token; where that is held to
    # fp32 rounding, the weight cache is chosen fp32 (the default over fp32 weights is bf16 on CUDA)
    if tol < 1e-3:
        gpu.model.rnn_weight_dtype = torch.float32
    state = gpu.init_state(2)
    steps = []
    for t in range(ids.shape[1]):
        logits, state = gpu.step(ids[:, t].cuda(), state)
        steps.append(logits)
    assert _rel_err(torch.stack(steps, 1), got) < (1e-4 if tol < 1e-3 else 0.05)
    new, _ = gpu.generate([5, 6, 7], max_new_tokens=8, seed=0)
    assert len(new) == 8 and all(0 <= t < 200 for t in new)

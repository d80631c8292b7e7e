"""The block's two execution options on the CPU: one dtype under autocast, and the parts around
the WKV operator through torch.compile (inductor's CPU backend), both against plain eager fp32."""
from __future__ import annotations

import copy

import pytest
import torch

from engine.model import RWKV7, ModelConfig


def _model(seed, L=2, C=128, V=97, arch="x080"):
    torch.manual_seed(seed)
    return RWKV7(ModelConfig(arch=arch, n_layer=L, n_embd=C, vocab_size=V, head_size=64), wkv_backend="chunked")


@pytest.mark.slow
def test_autocast_runs_the_blocks_in_one_dtype_and_trains_fp32_masters():
    model = _model(1)
    idx = torch.randint(0, 97, (2, 33))
    seen = []
    hook = model.blocks[1].register_forward_hook(lambda mod, args, out: seen.append(out[0].dtype))
    ref = model(idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(idx)
    hook.remove()
    assert seen == [torch.float32, torch.bfloat16]  # the residual stream leaves the block in bf16
    assert ((low.float() - ref).norm() / ref.norm()) < 3e-2
    low.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.slow
def test_compiled_block_parts_equal_eager(packed):
    model = _model(2)
    compiled = copy.deepcopy(model).compile_blocks()
    B, T = (1, 41) if packed else (2, 29)
    idx = torch.randint(0, 97, (B, T))
    cu = torch.tensor([0, 9, 9, 30, 41]) if packed else None
    outs, grads = [], []
    for m in (model, compiled):
        logits, state = m(idx, cu_seqlens=cu, return_state=True)
        (logits.logsumexp(-1).mean() + state.wkv.square().mean()).backward()
        outs.append((logits, state))
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-5)
    for name in ("att_shift", "wkv", "ffn_shift"):
        a, b = getattr(outs[0][1], name), getattr(outs[1][1], name)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=name)
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)

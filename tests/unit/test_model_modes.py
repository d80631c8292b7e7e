"""Parallel (GPT) mode and recurrent (RNN) mode compute the same model."""
from __future__ import annotations

import pytest
import torch

from engine.model import RWKVState
from model_helpers import perturbed_model, rel_err

BACKENDS = ["reference", "chunked"]


def run_rnn(model, idx, state=None):
    B, T = idx.shape
    state = state if state is not None else model.init_state(B)
    outs = []
    with torch.no_grad():
        for t in range(T):
            logits, state = model.step(idx[:, t], state)
            outs.append(logits)
    return torch.stack(outs, dim=1), state


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["x070", "x080"])
@pytest.mark.slow
def test_gpt_equals_rnn_step_by_step(arch, backend):
    model = perturbed_model(arch=arch, n_layer=3, backend=backend, seed=1)
    idx = torch.randint(0, model.config.vocab_size, (2, 21), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        gpt, gpt_state = model(idx, return_state=True)
    rnn, rnn_state = run_rnn(model, idx)
    assert gpt.shape == (2, 21, model.config.vocab_size)
    assert rel_err(rnn, gpt) < 1e-5
    assert rel_err(rnn_state.wkv, gpt_state.wkv) < 1e-5
    assert torch.allclose(rnn_state.att_shift, gpt_state.att_shift, atol=1e-5)
    assert torch.allclose(rnn_state.ffn_shift, gpt_state.ffn_shift, atol=1e-5)
    assert gpt_state.wkv.dtype == torch.float32 and gpt_state.wkv.shape == (3, 2, 2, 32, 32)


def test_x080_deep_embed_changes_the_output_per_token():
    model = perturbed_model(arch="x080", seed=2)
    idx = torch.randint(0, model.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(idx)
        model.blocks[1].ffn.enn.weight[idx[0, 4]] *= 3.0
        after = model(idx)
    # positions before the scaled token are untouched (causal), the token's own position moves
    assert torch.equal(before[:, :4], after[:, :4])
    assert rel_err(after[:, 4], before[:, 4]) > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.slow
def test_state_carried_across_two_gpt_calls_equals_one_call(backend):
    model = perturbed_model(arch="x070", n_layer=2, backend=backend, seed=4)
    idx = torch.randint(0, model.config.vocab_size, (3, 30), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        whole, whole_state = model(idx, return_state=True)
        first, mid_state = model(idx[:, :13], return_state=True)
        second, end_state = model(idx[:, 13:], state=mid_state, return_state=True)
    assert rel_err(torch.cat([first, second], dim=1), whole) < 1e-5
    assert rel_err(end_state.wkv, whole_state.wkv) < 1e-5
    assert torch.allclose(end_state.att_shift, whole_state.att_shift, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.slow
def test_packed_sequences_equal_separate_calls(backend):
    """cu_seqlens: state AND token shift restart at every document boundary."""
    model = perturbed_model(arch="x080", n_layer=2, backend=backend, seed=6)
    lengths = [5, 11, 4]
    gen = torch.Generator().manual_seed(7)
    docs = [torch.randint(1, model.config.vocab_size, (1, n), generator=gen) for n in lengths]
    packed = torch.cat(docs, dim=1)
    cu = torch.tensor([0, 5, 16, 20])
    # each document continues its own earlier text (an initial state per document)
    prompts = [torch.randint(1, model.config.vocab_size, (1, 3), generator=gen) for _ in lengths]
    with torch.no_grad():
        starts = [model(p, return_state=True)[1] for p in prompts]
        init = RWKVState.cat(starts)
        packed_logits, packed_state = model(packed, state=init, cu_seqlens=cu, return_state=True)
        fresh_logits = model(packed, cu_seqlens=cu)
        for n, doc in enumerate(docs):
            sl = slice(int(cu[n]), int(cu[n + 1]))
            alone, alone_state = model(doc, state=starts[n], return_state=True)
            assert rel_err(packed_logits[:, sl], alone) < 1e-5
            assert rel_err(packed_state.wkv[:, n], alone_state.wkv[:, 0]) < 1e-5
            assert torch.allclose(packed_state.att_shift[:, n], alone_state.att_shift[:, 0], atol=1e-6)
            assert torch.allclose(packed_state.ffn_shift[:, n], alone_state.ffn_shift[:, 0], atol=1e-6)
            assert rel_err(fresh_logits[:, sl], model(doc)) < 1e-5


@pytest.mark.slow
def test_step_leaves_the_given_state_unchanged_and_tracks_weight_updates():
    model = perturbed_model(seed=8)
    state = model.init_state(2)
    tokens = torch.tensor([3, 7])
    with torch.no_grad():
        logits, new = model.step(tokens, state)
        assert state.wkv.abs().max() == 0 and new.wkv.abs().max() > 0
        # the LN0-folded embedding cache must notice an in-place weight update
        model.emb.weight[3] += 1.0
        again, _ = model.step(tokens, state)
        gpt = model(tokens.view(2, 1))[:, 0]
    assert rel_err(again, gpt) < 1e-5
    assert not torch.allclose(again[0], logits[0])


@pytest.mark.slow
def test_gradients_reach_the_initial_state_in_parallel_mode():
    model = perturbed_model(seed=9).train()
    state = model.init_state(1)
    state.wkv.normal_()
    state.wkv.requires_grad_(True)
    state.att_shift.requires_grad_(True)
    logits, out = model(torch.tensor([[1, 2, 3, 4]]), state=state, return_state=True)
    (logits.square().mean() + out.wkv.square().mean()).backward()
    assert state.wkv.grad is not None and state.wkv.grad.abs().max() > 0
    assert state.att_shift.grad.abs().max() > 0
    assert model.blocks[1].att.w1.grad.abs().max() > 0


@pytest.mark.slow
def test_bf16_model_keeps_fp32_wkv_state_and_stays_close():
    model = perturbed_model(seed=10, scale=0.05)
    bf16 = perturbed_model(seed=10, scale=0.05, dtype=torch.bfloat16)
    idx = torch.randint(0, model.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(idx)
        out, state = bf16(idx, return_state=True)
        step_logits, step_state = bf16.step(idx[:, 0], bf16.init_state(1))
    assert out.dtype == torch.bfloat16 and state.att_shift.dtype == torch.bfloat16
    assert state.wkv.dtype == torch.float32 and step_state.wkv.dtype == torch.float32
    assert rel_err(out.float(), ref) < 0.05
    assert rel_err(step_logits.float(), ref[:, 0]) < 0.05


def test_state_helpers_select_repeat_cat():
    model = perturbed_model(seed=11)
    idx = torch.randint(0, model.config.vocab_size, (3, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, state = model(idx, return_state=True)
    assert state.batch_size == 3 and state.n_layer == 2
    picked = state.select(torch.tensor([2, 0]))
    assert torch.equal(picked.wkv[:, 0], state.wkv[:, 2]) and torch.equal(picked.att_shift[:, 1], state.att_shift[:, 0])
    rep = state.select([1]).repeat(4)
    assert rep.batch_size == 4 and torch.equal(rep.ffn_shift[:, 3], state.ffn_shift[:, 1])
    joined = RWKVState.cat([state.select([0]), state.select([1, 2])])
    assert torch.equal(joined.wkv, state.wkv)
    copy = state.clone()
    copy.wkv.zero_()
    assert state.wkv.abs().max() > 0
    assert state.to("cpu", torch.bfloat16).wkv.dtype == torch.float32


def test_mismatched_state_and_packing_are_clear_errors():
    model = perturbed_model(seed=12)
    with pytest.raises(ValueError, match="state holds 2 sequences but the input has 1"):
        model(torch.tensor([[1, 2]]), state=model.init_state(2))
    with pytest.raises(ValueError, match="batch size 1"):
        model(torch.tensor([[1, 2], [3, 4]]), cu_seqlens=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="must start at 0 and end at T=2"):
        model(torch.tensor([[1, 2]]), cu_seqlens=torch.tensor([0, 1]))

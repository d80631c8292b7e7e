"""engine.PianoMuseRWKV: strategies, physical slicing + loss alignment, RNN generation, save."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine import PianoMuseRWKV, StrategyError
from engine.model import ModelConfig, completion_loss, completion_mask
from model_helpers import perturbed_model, rel_err

CONFIG = ModelConfig(n_layer=2, n_embd=64, vocab_size=40, head_size=32)


@pytest.fixture()
def muse(tmp_path):
    path = tmp_path / "muse.pth"
    from engine.model import save_checkpoint

    save_checkpoint(perturbed_model(seed=41), path, tokenizer={"kind": "REMI"})
    return PianoMuseRWKV(path, strategy="cpu fp32", wkv_backend="reference")


def test_strategies(monkeypatch):
    assert PianoMuseRWKV(config=CONFIG, strategy="cpu bf16").model.emb.weight.dtype == torch.bfloat16
    with pytest.raises(StrategyError, match="unknown strategy 'cpu fp16'"):
        PianoMuseRWKV(config=CONFIG, strategy="cpu fp16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # this machine has no GPU; make it certain
    with pytest.raises(StrategyError, match="needs an NVIDIA GPU but PyTorch sees none here; use 'cpu fp32'"):
        PianoMuseRWKV(config=CONFIG, strategy="cuda bf16")
    with pytest.raises(ValueError, match="needs a model_path"):
        PianoMuseRWKV()


def test_physical_slicing_and_alignment(muse):
    ids = torch.tensor([[5, 6, 7, 8, 9, 0, 0], [11, 12, 13, 14, 15, 16, 17]])
    ctx = torch.tensor([2, 4])
    mask = completion_mask(ids, ctx)
    # row 0: 5 real tokens, context 2 -> positions 1..3 predict 7, 8, 9; row 1: positions 3..5 predict 15, 16, 17
    assert mask.tolist() == [[False, True, True, True, False, False, False], [False, False, False, True, True, True, False]]
    muse.eval()
    with torch.no_grad():
        full = muse(ids)
    assert full.shape == (2, 7, 40)
    muse.train()
    sliced = muse(ids, ctx_lengths=ctx)
    assert sliced.shape == (6, 40)
    assert rel_err(sliced, full[mask]) < 1e-6
    loss = completion_loss(sliced, ids, mask)
    manual = F.cross_entropy(torch.stack([full[0, 1], full[0, 2], full[0, 3], full[1, 3], full[1, 4], full[1, 5]]), torch.tensor([7, 8, 9, 15, 16, 17]))
    assert abs(loss.item() - manual.item()) < 1e-5
    loss.backward()
    assert muse.model.head.weight.grad is not None
    # an attention mask ends a row early even where the ids are not the pad id
    attn = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    assert muse(ids, ctx_lengths=ctx, attention_mask=attn).shape == (5, 40)
    with pytest.raises(RuntimeError, match="same mask"):
        completion_loss(sliced[:5], ids, mask)


def test_greedy_generation_matches_parallel_mode(muse):
    context = [3, 1, 4, 1, 5]
    new, state = muse.generate(context, max_new_tokens=6, temperature=0)
    assert len(new) == 6 and state.batch_size == 1
    seq = context + new
    with torch.no_grad():
        logits = muse.model(torch.tensor([seq]))
    for i, tok in enumerate(new):
        assert tok == int(logits[0, len(context) - 1 + i].argmax())
    # continuing from the returned state equals generating from the whole text
    more, _ = muse.generate([9, 2], max_new_tokens=3, temperature=0, state=state)
    again, _ = muse.generate(seq + [9, 2], max_new_tokens=3, temperature=0)
    assert more == again


def test_sampling_is_seeded_and_respects_top_k(muse):
    a, _ = muse.generate([1, 2, 3], max_new_tokens=20, seed=7, temperature=1.0, top_p=1.0)
    b, _ = muse.generate([1, 2, 3], max_new_tokens=20, seed=7, temperature=1.0, top_p=1.0)
    assert a == b and all(0 <= t < 40 for t in a)
    one, _ = muse.generate([1, 2, 3], max_new_tokens=5, seed=1, top_k=1, temperature=1.0)
    greedy, _ = muse.generate([1, 2, 3], max_new_tokens=5, temperature=0)
    assert one == greedy
    with pytest.raises(ValueError, match="at least one context token"):
        muse.generate([], max_new_tokens=2)


def test_wrapper_step_save_and_reload(muse, tmp_path):
    state = muse.init_state(2)
    logits, state2 = muse.step(torch.tensor([4, 5]), state)
    assert logits.shape == (2, 40) and state2.batch_size == 2
    path = muse.save(tmp_path / "again")
    back = PianoMuseRWKV(path, wkv_backend="reference")
    assert back.tokenizer_config == {"kind": "REMI"} and back.config == muse.config
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(back(ids), muse(ids))
    assert back.train() is back and back.training and not back.eval().training


def test_head_sees_only_completion_rows_and_padding_id_is_honoured(muse):
    """Physical slicing: the head computes M rows, never the context logits; a padding id other
    than 0 ends a row where that id starts."""
    rows_into_head = []
    hook = muse.model.head.register_forward_hook(lambda mod, args, out: rows_into_head.append(args[0].shape[:-1]))
    ids = torch.tensor([[5, 6, 7, 8, 9, 39, 39], [11, 12, 13, 14, 15, 16, 17]])  # 39 pads row 0
    ctx = torch.tensor([2, 4])
    try:
        muse.train()
        sliced = muse(ids, ctx_lengths=ctx, padding_token_id=39)
    finally:
        hook.remove()
    mask = completion_mask(ids, ctx, padding_token_id=39)
    assert mask.sum() == 6 and rows_into_head == [torch.Size([6])] and sliced.shape == (6, 40)
    # with the default padding id 0, the 39s are real tokens: row 0 predicts 2 more of them
    assert muse(ids, ctx_lengths=ctx).shape == (8, 40)
    loss = completion_loss(sliced, ids, mask, padding_token_id=39)
    muse.eval()
    with torch.no_grad():
        full = muse(ids)
    targets = torch.tensor([7, 8, 9, 15, 16, 17])
    assert abs(loss.item() - F.cross_entropy(full[mask], targets).item()) < 1e-5

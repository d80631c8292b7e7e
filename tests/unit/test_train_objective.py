"""The training objective: completion-only loss, packed LM loss, L2Wrap, activation
checkpointing and truncated BPTT, each against an explicit computation on a tiny real model."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from engine.model import RWKV7, ModelConfig, completion_mask
from engine.train.feed import MicroBatch
from engine.train.objective import L2Wrap, TrainingObjective, enable_activation_checkpointing, lm_loss_mask

V = 48


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = RWKV7(ModelConfig(n_layer=2, n_embd=64, vocab_size=V, head_size=32))
    with torch.no_grad():  # the reference init zeroes output projections; wake them so every path matters
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (3, 20), generator=g)
    ids[1, 15:] = 0  # padding
    ids[2, 9:] = 0
    ctx = torch.tensor([6, 10, 1])
    attention = ids.ne(0).long()
    return ids, ctx, attention


def test_completion_loss_equals_explicitly_masked_cross_entropy(model):
    ids, ctx, attention = _batch()
    mask = completion_mask(ids, ctx, attention)
    target_ids = F.pad(ids, (0, 1))
    loss_sum, _ = TrainingObjective(model)(ids, mask, target_ids)
    # explicit: full logits, hand-made mask from the rule "ctx-1 <= t <= valid-2"
    logits = model(ids).float()
    total, count = 0.0, 0
    for b in range(3):
        valid = int(attention[b].sum())
        for t in range(int(ctx[b]) - 1, valid - 1):
            total += F.cross_entropy(logits[b, t], ids[b, t + 1], reduction="sum")
            count += 1
    assert int(mask.sum()) == count
    torch.testing.assert_close(loss_sum, torch.as_tensor(total), rtol=1e-5, atol=1e-5)


def test_packed_lm_loss_skips_document_boundaries(model):
    flat = torch.randint(3, V, (1, 18), generator=torch.Generator().manual_seed(2))
    cu = torch.tensor([0, 7, 12, 18])
    mask = lm_loss_mask(flat, cu)
    assert mask.sum() == 18 - 3 and not mask[0, 6] and not mask[0, 11] and not mask[0, 17]
    loss_sum, _ = TrainingObjective(model)(flat, mask, F.pad(flat, (0, 1)), cu)
    expected = 0.0
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):  # each document on its own, from a fresh state
        doc = flat[:, s:e]
        expected += F.cross_entropy(model(doc)[0, :-1].float(), doc[0, 1:], reduction="sum")
    torch.testing.assert_close(loss_sum, expected, rtol=1e-5, atol=1e-5)


def test_l2wrap_adds_the_reference_gradient():
    logits = torch.randn(5, 7, requires_grad=True)
    targets = torch.randint(0, 7, (5,))
    plain = torch.autograd.grad(F.cross_entropy(logits, targets), logits)[0]
    # the trainer wraps the SUMMED loss and scales it by 1 / (target count) afterwards
    loss = L2Wrap.apply(F.cross_entropy(logits, targets, reduction="sum"), logits) / 5
    wrapped = torch.autograd.grad(loss, logits)[0]
    extra = torch.zeros_like(logits)
    top, idx = logits.detach().max(-1, keepdim=True)
    extra.scatter_(-1, idx, top * 1e-4 / 5)  # 1e-4 / (number of rows) * max logit
    torch.testing.assert_close(wrapped - plain, extra)


def test_activation_checkpointing_gives_identical_gradients(model):
    ids, ctx, attention = _batch()
    mask = completion_mask(ids, ctx, attention)

    def grads(m):
        m.zero_grad()
        loss, _ = TrainingObjective(m)(ids, mask, F.pad(ids, (0, 1)))
        loss.backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    plain = grads(model)
    ckpt_model = copy.deepcopy(model)
    enable_activation_checkpointing(ckpt_model)
    assert set(ckpt_model.state_dict()) == set(model.state_dict())  # names (checkpoint format) unchanged
    again = grads(ckpt_model)
    assert plain.keys() == again.keys()
    for n in plain:
        torch.testing.assert_close(plain[n], again[n], rtol=1e-5, atol=1e-6)


def test_tbptt_chunks_carry_state_and_sum_to_the_full_loss(model):
    ids, ctx, attention = _batch()
    mb = MicroBatch(ids, completion_mask(ids, ctx, attention), None)
    objective = TrainingObjective(model)
    whole, _ = objective(*mb.chunks(0)[0].to(torch.device("cpu")))
    pieces = mb.chunks(7)
    assert [c.input_ids.shape[1] for c in pieces] == [7, 7, 6] and pieces[0].first and pieces[-1].last
    total, state = 0.0, None
    with torch.no_grad():
        for c in pieces:
            part, state = objective(c.input_ids, c.loss_mask, c.target_ids, state=state, want_state=not c.last)
            total += part
    torch.testing.assert_close(total, whole.detach(), rtol=1e-5, atol=1e-5)


def _plain_head_loss(h, weight, targets, l2wrap):
    logits = h @ weight.t()
    loss = F.cross_entropy(logits.float(), targets, reduction="sum")
    return L2Wrap.apply(loss, logits) if l2wrap else loss


@pytest.mark.parametrize("l2wrap", [False, True])
@pytest.mark.parametrize("chunk_rows", [7, 64, None])
def test_fused_head_loss_equals_the_plain_head_and_loss(l2wrap, chunk_rows):
    """linear_cross_entropy against head + cross-entropy (+ L2Wrap): the loss and both gradients,
    fresh random inputs, chunks that do and do not divide the rows, an incoming gradient != 1."""
    from engine.model.loss import linear_cross_entropy

    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    M, C, Vocab = 50, 24, 37
    h = torch.randn(M, C, generator=g, requires_grad=True)
    w = (torch.randn(Vocab, C, generator=g) * 0.7).requires_grad_(True)
    t = torch.randint(0, Vocab, (M,), generator=g)
    h2, w2 = h.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    fused = linear_cross_entropy(h, w, t, l2wrap=l2wrap, chunk_rows=chunk_rows)
    plain = _plain_head_loss(h2, w2, t, l2wrap)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    (fused * 0.37).backward()
    (plain * 0.37).backward()
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-5, atol=1e-6)


def test_fused_head_loss_under_bf16_autocast_matches_autocast_linear():
    from engine.model.loss import linear_cross_entropy

    g = torch.Generator().manual_seed(3)
    h = torch.randn(40, 32, generator=g, requires_grad=True)
    w = (torch.randn(29, 32, generator=g) * 0.5).requires_grad_(True)
    t = torch.randint(0, 29, (40,), generator=g)
    h2, w2 = h.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(h, w, t, chunk_rows=16)
        plain = F.cross_entropy(F.linear(h2, w2).float(), t, reduction="sum")
    torch.testing.assert_close(fused, plain, rtol=2e-3, atol=2e-2)
    fused.backward()
    plain.backward()
    assert h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    torch.testing.assert_close(h.grad, h2.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(w.grad, w2.grad, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("l2wrap", [False, True])
def test_objective_with_the_fused_head_equals_the_plain_objective(model, l2wrap):
    ids, ctx, attention = _batch()
    mask = completion_mask(ids, ctx, attention)
    grads = []
    for fused in (False, True):
        m = copy.deepcopy(model).train()
        loss, _ = TrainingObjective(m, l2wrap=l2wrap, fused_head=fused)(ids, mask, F.pad(ids, (0, 1)))
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = grads
    torch.testing.assert_close(l0, l1, rtol=1e-5, atol=1e-5)
    assert g0.keys() == g1.keys()
    for n in g0:
        torch.testing.assert_close(g0[n], g1[n], rtol=1e-4, atol=1e-6, msg=n)

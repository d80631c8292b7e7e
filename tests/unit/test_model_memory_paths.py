"""The training-only memory paths of the model against the plain math, on fresh random inputs:
the ChannelMix that recomputes its [tokens, 4C] activations in backward (values and every
gradient, fp64 gradcheck and fp32 against autograd of the plain formula), and what it saves."""
from __future__ import annotations

import torch

from engine.model.block_math import _ReluSquareMLP, relu_square_mlp


def _inputs(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(2, 7, 12, generator=g, dtype=dtype, requires_grad=True)
    K = (torch.randn(12, 48, generator=g, dtype=dtype) * 0.5).requires_grad_(True)
    V = (torch.randn(48, 12, generator=g, dtype=dtype) * 0.5).requires_grad_(True)
    return k, K, V


def test_recomputing_mlp_passes_gradcheck():
    k, K, V = _inputs(torch.float64, torch.seed() % 2**31)
    assert torch.autograd.gradcheck(_ReluSquareMLP.apply, (k, K, V))


def test_recomputing_mlp_equals_autograd_of_the_plain_formula():
    k, K, V = _inputs(torch.float32, torch.seed() % 2**31)
    grad = torch.randn(2, 7, 12)
    out = _ReluSquareMLP.apply(k, K, V)
    out.backward(grad)
    ours = [t.grad.clone() for t in (k, K, V)]
    for t in (k, K, V):
        t.grad = None
    ref = relu_square_mlp(k, K, V)
    ref.backward(grad)
    torch.testing.assert_close(out, ref)
    for a, t in zip(ours, (k, K, V)):
        torch.testing.assert_close(a, t.grad, rtol=1e-5, atol=1e-6)


def test_recomputing_mlp_saves_only_its_inputs():
    k, K, V = _inputs(torch.float32, 5)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        _ReluSquareMLP.apply(k, K, V)
    assert sorted(t.numel() for t in saved) == sorted(t.numel() for t in (k, K, V))
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        relu_square_mlp(k, K, V)
    assert max(t.numel() for t in saved) == 2 * 7 * 48  # the plain path keeps a [tokens, 4C] activation

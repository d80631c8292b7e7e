"""Random WKV7 inputs shaped like the model's, for tests and benchmarks of every backend.

The model feeds the operator a = -kappa_hat (unit norm per head) and b = kappa_hat * iclr with
iclr = sigmoid(.) in (0, 1); decay pre-activations vary around 0, so the decays d spread over
(0.545, 1). Uniform random a/b would make the transition blow up and hide real numerical issues.
"""
from __future__ import annotations

import torch


def realistic_inputs(B, T, H, N, *, dtype=torch.float32, seed=0, decay_shift=0.0, device="cpu"):
    """dict(r, w, k, v, a, b) of shape [B, T, H, N]; ``decay_shift`` > 0 pushes decays towards 0.545."""
    g = torch.Generator().manual_seed(seed)

    def randn():
        return torch.randn(B, T, H, N, generator=g, dtype=torch.float64)

    kappa = randn()
    kappa = kappa / kappa.norm(dim=-1, keepdim=True)
    iclr = torch.sigmoid(randn())
    out = dict(r=randn(), w=randn() + decay_shift, k=randn() * 0.5, v=randn(), a=-kappa, b=kappa * iclr)
    return {name: x.to(device=device, dtype=dtype) for name, x in out.items()}


def random_state(n, H, N, *, dtype=torch.float32, seed=1, scale=0.1, device="cpu"):
    """A random [n, H, N, N] WKV state (what a previous chunk or a cached prompt would leave)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, H, N, N, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)

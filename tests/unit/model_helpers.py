"""Shared helpers for the model tests: small random models whose every parameter matters."""
from __future__ import annotations

import torch

from engine.model import RWKV7, ModelConfig


def perturbed_model(arch="x070", n_layer=2, n_embd=64, vocab_size=40, head_size=32, seed=0, scale=0.2, backend="reference", dtype=torch.float32, **low_rank):
    """A fresh model with every parameter nudged off its init (zero inits would hide terms).
    ``low_rank``: dim_w, dim_a, dim_v, dim_g overrides."""
    torch.manual_seed(seed)
    config = ModelConfig(arch=arch, n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size, head_size=head_size, **low_rank)
    model = RWKV7(config, wkv_backend=backend)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.to(dtype).eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a.detach().double() - b.detach().double()).abs().max() / b.detach().double().abs().max().clamp_min(1e-30))

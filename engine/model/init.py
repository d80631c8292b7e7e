"""The reference's from-scratch initialisation (docs/rwkv7-spec.md section 6), parameter by parameter.

RWKV-7's stability depends on this init (and on the optimizer groups), so it lives next to the
model and is tested against the table. Notation: l layer, L layers, r0 = l/(L-1), r1 = 1 - l/L,
q_n = n/C, lin_n = n/(C-1) - 0.5, zig_n = z|z| with z = ((n mod N) - (N-1)/2) / ((N-1)/2),
www_n = -6 + 6 (n/(C-1))^(1 + r0^0.3).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .config import ModelConfig


def layer_ratios(layer_id: int, n_layer: int) -> tuple[float, float]:
    """(r0, r1): r0 goes 0 -> 1 over depth (0 for a one-layer model), r1 goes 1 -> almost 0."""
    r0 = layer_id / (n_layer - 1) if n_layer > 1 else 0.0
    r1 = 1.0 - layer_id / n_layer
    return r0, r1


def channel_profiles(config: ModelConfig, layer_id: int) -> dict[str, torch.Tensor]:
    """The per-channel init vectors of one layer, [C] in fp64 (computed once, then cast)."""
    C, N = config.n_embd, config.head_size
    r0, r1 = layer_ratios(layer_id, config.n_layer)
    n = torch.arange(C, dtype=torch.float64)
    q = n / C
    lin = n / (C - 1) - 0.5 if C > 1 else torch.zeros(C, dtype=torch.float64)
    z = ((n % N) - (N - 1) / 2) / ((N - 1) / 2) if N > 1 else torch.zeros(C, dtype=torch.float64)
    zig = z * z.abs()
    www = -6 + 6 * (n / max(C - 1, 1)) ** (1 + r0**0.3)
    return {
        "att.x_r": 1 - q ** (0.2 * r1),
        "att.x_g": 1 - q ** (0.2 * r1),
        "att.x_w": 1 - q ** (0.9 * r1),
        "att.x_a": 1 - q ** (0.9 * r1),
        "att.x_k": 1 - q ** (0.7 * r1),
        "att.x_v": 1 - q ** (0.7 * r1),
        "att.w0": www + 0.5 + 2.5 * zig,
        "att.a0": -0.19 + 0.3 * zig + 0.4 * lin,
        "att.v0": 0.73 - 0.4 * lin,
        "att.k_k": 0.71 - 0.1 * lin,
        "att.k_a": torch.full((C,), 1.02, dtype=torch.float64),
        "ffn.x_k": 1 - q ** (r1**4),
    }


# gain of each orthogonal matrix, by name inside a block (0 means zeros)
ORTHOGONAL_GAINS = {
    "att.w2": 0.1,
    "att.a2": 0.1,
    "att.v2": 0.1,
    "att.g2": 0.1,
    "att.receptance.weight": 1.0,
    "att.key.weight": 0.1,
    "att.value.weight": 1.0,
    "att.output.weight": 0.0,
    "ffn.key.weight": 1.0,
    "ffn.value.weight": 0.0,
}
ZERO_LOW_RANK = ("att.w1", "att.a1", "att.v1", "att.g1")


def head_gain(config: ModelConfig) -> float:
    V, C = config.vocab_size, config.n_embd
    return 0.5 * (V / C) ** 0.5 if V > C else 0.5


def _orthogonal(t: torch.Tensor, gain: float, generator: torch.Generator | None) -> None:
    if gain == 0.0:
        t.zero_()
        return
    # orthogonalise in fp32 on the CPU (QR is not available for every dtype/device), then copy
    tmp = torch.empty(t.shape, dtype=torch.float32)
    nn.init.orthogonal_(tmp, gain=gain, generator=generator)
    t.copy_(tmp)


def init_block_tensor(name: str, t: torch.Tensor, config: ModelConfig, layer_id: int, generator: torch.Generator | None = None, profiles: dict | None = None) -> None:
    """Initialise one block tensor in place; ``name`` is relative to the block (e.g. "att.w0")."""
    with torch.no_grad():
        profiles = profiles if profiles is not None else channel_profiles(config, layer_id)
        if name in profiles:
            t.copy_(profiles[name].view(t.shape))
        elif name in ORTHOGONAL_GAINS:
            _orthogonal(t, ORTHOGONAL_GAINS[name], generator)
        elif name in ZERO_LOW_RANK:
            t.zero_()
        elif name == "att.r_k":
            t.fill_(-0.04)
        elif name == "att.ln_x.weight":
            t.fill_(((layer_id + 1) / config.n_layer) ** 0.7)
        elif name == "ffn.enn.weight":
            t.fill_(1.0)  # a fresh "v8" model starts as x070
        elif name.endswith("weight") and name.split(".")[0] in ("ln0", "ln1", "ln2"):
            t.fill_(1.0)
        elif name.endswith("bias"):
            t.zero_()
        else:
            raise KeyError(f"no init rule for block tensor {name!r}")


def init_parameters(model: nn.Module, seed: int | None = None) -> None:
    """Apply the reference init to every parameter of an ``RWKV7`` model."""
    config: ModelConfig = model.config
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.no_grad():
        for l, block in enumerate(model.blocks):
            profiles = channel_profiles(config, l)
            for name, p in block.named_parameters():
                init_block_tensor(name, p, config, l, generator, profiles)
        emb = torch.empty(model.emb.weight.shape, dtype=torch.float32).uniform_(-1e-4, 1e-4, generator=generator)
        model.emb.weight.copy_(emb)
        _orthogonal(model.head.weight, head_gain(config), generator)
        model.ln_out.weight.fill_(1.0)
        model.ln_out.bias.zero_()

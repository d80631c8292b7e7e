"""A fresh model carries the reference init of docs/rwkv7-spec.md section 6, group by group.

Expected values are computed here from the table with plain Python math, independently of
engine/model/init.py.
"""
from __future__ import annotations

import math

import pytest
import torch

from engine.model import RWKV7, ModelConfig


def per_channel(C, fn):
    return torch.tensor([fn(n) for n in range(C)], dtype=torch.float64)


def zig(n, N):
    z = ((n % N) - (N - 1) / 2) / ((N - 1) / 2)
    return z * abs(z)


def assert_orthogonal(w: torch.Tensor, gain: float):
    w = w.double()
    m, n = w.shape
    gram = w @ w.T if m <= n else w.T @ w
    eye = torch.eye(min(m, n), dtype=torch.float64)
    assert torch.allclose(gram, gain**2 * eye, atol=1e-5 * max(gain**2, 1)), f"not orthogonal with gain {gain}"


@pytest.mark.parametrize("arch,V", [("x070", 300), ("x080", 64)])
@pytest.mark.slow
def test_every_parameter_follows_the_init_table(arch, V):
    L, C, N = 3, 128, 32
    model = RWKV7(ModelConfig(arch=arch, n_layer=L, n_embd=C, vocab_size=V, head_size=N))
    params = dict(model.named_parameters())
    checked = set()

    def check(name, expected, atol=1e-6):
        got = params[name].detach().double().flatten()
        assert torch.allclose(got, expected.flatten(), atol=atol), f"{name}: max diff {(got - expected.flatten()).abs().max():.3g}"
        checked.add(name)

    def check_fill(name, value):
        check(name, torch.full(params[name].shape, float(value), dtype=torch.float64))

    def check_ortho(name, gain):
        if gain == 0:
            check_fill(name, 0.0)
        else:
            assert_orthogonal(params[name].detach(), gain)
            checked.add(name)

    for l in range(L):
        r0, r1 = l / (L - 1), 1 - l / L
        b = f"blocks.{l}."
        for key, power in (("x_r", 0.2), ("x_g", 0.2), ("x_w", 0.9), ("x_a", 0.9), ("x_k", 0.7), ("x_v", 0.7)):
            check(b + "att." + key, per_channel(C, lambda n: 1 - (n / C) ** (power * r1)))
        check(b + "ffn.x_k", per_channel(C, lambda n: 1 - (n / C) ** (r1**4)))
        check(b + "att.w0", per_channel(C, lambda n: -6 + 6 * (n / (C - 1)) ** (1 + r0**0.3) + 0.5 + 2.5 * zig(n, N)), atol=1e-5)
        check(b + "att.a0", per_channel(C, lambda n: -0.19 + 0.3 * zig(n, N) + 0.4 * (n / (C - 1) - 0.5)))
        check(b + "att.v0", per_channel(C, lambda n: 0.73 - 0.4 * (n / (C - 1) - 0.5)))
        check(b + "att.k_k", per_channel(C, lambda n: 0.71 - 0.1 * (n / (C - 1) - 0.5)))
        check_fill(b + "att.k_a", 1.02)
        check_fill(b + "att.r_k", -0.04)
        for key in ("w1", "a1", "v1", "g1"):
            check_fill(b + "att." + key, 0.0)
        for key in ("w2", "a2", "v2", "g2"):
            check_ortho(b + "att." + key, 0.1)
        check_ortho(b + "att.receptance.weight", 1.0)
        check_ortho(b + "att.key.weight", 0.1)
        check_ortho(b + "att.value.weight", 1.0)
        check_ortho(b + "att.output.weight", 0.0)
        check_ortho(b + "ffn.key.weight", 1.0)
        check_ortho(b + "ffn.value.weight", 0.0)
        check_fill(b + "att.ln_x.weight", ((l + 1) / L) ** 0.7)
        check_fill(b + "att.ln_x.bias", 0.0)
        for ln in ("ln1", "ln2") + (("ln0",) if l == 0 else ()):
            check_fill(b + ln + ".weight", 1.0)
            check_fill(b + ln + ".bias", 0.0)
        if arch == "x080":
            check_fill(b + "ffn.enn.weight", 1.0)
    check_fill("ln_out.weight", 1.0)
    check_fill("ln_out.bias", 0.0)
    emb = params["emb.weight"].detach()
    assert emb.abs().max() <= 1e-4 and emb.std() > 3e-5  # uniform(-1e-4, 1e-4), not constant
    checked.add("emb.weight")
    check_ortho("head.weight", 0.5 * math.sqrt(V / C) if V > C else 0.5)
    assert checked == set(params), f"parameters without an init check: {sorted(set(params) - checked)}"


def test_parameter_count_matches_the_spec_formula():
    for arch in ("x070", "x080"):
        config = ModelConfig(arch=arch, n_layer=2, n_embd=128, vocab_size=100, head_size=64)
        C, V, L = 128, 100, 2
        Dw, Da, Dv, Dg = config.dim_w, config.dim_a, config.dim_v, config.dim_g
        formula = 2 * V * C + 4 * C + L * (19 * C + 12 * C * C + 2 * C * (Dw + Dv + Da + Dg)) + (L * V * C if arch == "x080" else 0)
        assert RWKV7(config).parameter_count() == formula == config.parameter_count()


def test_low_rank_defaults_match_released_models_and_follow_the_rule_elsewhere():
    assert [getattr(ModelConfig(n_embd=768), d) for d in ("dim_w", "dim_a", "dim_v", "dim_g")] == [64, 64, 32, 128]
    assert [getattr(ModelConfig(n_embd=2048), d) for d in ("dim_w", "dim_a", "dim_v", "dim_g")] == [96, 96, 64, 256]
    # C=512: 2.5*sqrt(512)=56.6 -> 64; 1.7*sqrt(512)=38.5 -> 32; 0.6*512^0.8=87.6 -> 96
    assert [getattr(ModelConfig(n_embd=512), d) for d in ("dim_w", "dim_a", "dim_v", "dim_g")] == [64, 64, 32, 96]
    assert ModelConfig(n_embd=512, dim_w=8).dim_w == 8

"""Optimizer groups (spec section 7) and the warm-up + cosine-in-tokens schedule."""
from __future__ import annotations

import math

import pytest
import torch

from engine.model import RWKV7, ModelConfig
from engine.train.config import OptimSection
from engine.train.optim import GROUP_DECAY, GROUP_PLAIN, GROUP_W0, build_optimizer, parameter_groups, set_learning_rate
from engine.train.schedule import CosineTokenSchedule


@pytest.fixture(scope="module")
def v8_model():
    return RWKV7(ModelConfig(arch="x080", n_layer=2, n_embd=64, vocab_size=40, head_size=32))


def test_groups_follow_the_reference(v8_model):
    groups = {g["name"]: g for g in parameter_groups(v8_model, weight_decay=0.1, w0_lr_scale=2.0)}
    decay = set(groups[GROUP_DECAY]["param_names"])
    w0 = set(groups[GROUP_W0]["param_names"])
    plain = set(groups[GROUP_PLAIN]["param_names"])
    expected_decay = {"emb.weight", "head.weight"}
    for l in range(2):
        expected_decay |= {f"blocks.{l}.att.{m}.weight" for m in ("receptance", "key", "value", "output")}
        expected_decay |= {f"blocks.{l}.ffn.{m}.weight" for m in ("key", "value")}
    assert decay == expected_decay
    assert w0 == {"blocks.0.att.w0", "blocks.1.att.w0"}
    # low-rank matrices (no ".weight"), vectors, LayerNorms, GroupNorm and the DeepEmbed gates
    assert {"blocks.0.att.w1", "blocks.1.att.a2", "blocks.0.att.r_k", "ln_out.weight", "blocks.0.ln0.bias",
            "blocks.1.att.ln_x.weight", "blocks.0.ffn.enn.weight", "blocks.1.att.x_r"} <= plain
    names = {n for n, _ in v8_model.named_parameters()}
    assert decay | w0 | plain == names and not (decay & w0) and not (decay & plain)
    assert groups[GROUP_DECAY]["weight_decay"] == 0.1
    assert groups[GROUP_W0]["weight_decay"] == 0.0 and groups[GROUP_PLAIN]["weight_decay"] == 0.0
    assert groups[GROUP_W0]["lr_scale"] == 2.0 and groups[GROUP_DECAY]["lr_scale"] == 1.0


def test_adamw_settings_and_lr_scaling(v8_model):
    opt = build_optimizer(v8_model, OptimSection(weight_decay=0.05, eps=1e-18), lr=1e-3, device=torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    for g in opt.param_groups:
        assert g["betas"] == (0.9, 0.99) and g["eps"] == 1e-18
    set_learning_rate(opt, 4e-4)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs[GROUP_W0] == pytest.approx(8e-4) and lrs[GROUP_DECAY] == pytest.approx(4e-4) and lrs[GROUP_PLAIN] == pytest.approx(4e-4)


def test_schedule_values():
    s = CosineTokenSchedule(lr=1e-3, lr_final=1e-5, warmup_steps=10, total_tokens=1000)
    assert s(0, 0) == pytest.approx(1e-5)  # warm-up starts at 1% of lr
    assert s(5, 0) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert s(10, 0) == pytest.approx(1e-3)
    assert s(50, 500) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)  # half-way in tokens: the mean
    assert s(60, 250) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert s(100, 1000) == pytest.approx(1e-5)
    assert s(200, 5000) == pytest.approx(1e-5)  # clamped after the end
    # the decay follows tokens, not steps: more steps with the same tokens keep the same lr
    assert s(20, 300) == pytest.approx(s(80, 300))
    assert CosineTokenSchedule(1e-3, 0.0, 0, 100)(0, 0) == pytest.approx(1e-3)

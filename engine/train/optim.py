"""AdamW with the reference parameter groups (rwkv7-spec.md section 7).

- weight decay only on ``.weight`` matrices with at least two non-singleton dimensions
  (emb, head, att receptance/key/value/output, ffn key/value);
- ``att.w0`` at ``w0_lr_scale`` (2x) the learning rate;
- everything else: no decay, 1x.

One deliberate departure: the "v8" DeepEmbed tables ``ffn.enn.weight`` are multiplicative gates
initialised to ones, so decaying them toward zero would shrink every FFN output; they get no decay
(the spec's parenthesised list of decayed matrices does not include them either).
"""
from __future__ import annotations

import torch
from torch import nn

GROUP_DECAY = "decay"
GROUP_W0 = "w0_2x"
GROUP_PLAIN = "no_decay"


def parameter_group_name(name: str, param: torch.Tensor) -> str:
    """Which optimizer group a named parameter belongs to."""
    if name.endswith("att.w0"):
        return GROUP_W0
    non_singleton = sum(1 for s in param.shape if s > 1)
    if name.endswith(".weight") and non_singleton >= 2 and not name.endswith("ffn.enn.weight"):
        return GROUP_DECAY
    return GROUP_PLAIN


def parameter_groups(model: nn.Module, weight_decay: float, w0_lr_scale: float = 2.0) -> list[dict]:
    """Param groups for torch.optim; each carries ``lr_scale`` (multiplied into the schedule's lr)."""
    buckets: dict[str, list[tuple[str, nn.Parameter]]] = {GROUP_DECAY: [], GROUP_W0: [], GROUP_PLAIN: []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            buckets[parameter_group_name(name, param)].append((name, param))
    settings = {
        GROUP_DECAY: {"weight_decay": weight_decay, "lr_scale": 1.0},
        GROUP_W0: {"weight_decay": 0.0, "lr_scale": w0_lr_scale},
        GROUP_PLAIN: {"weight_decay": 0.0, "lr_scale": 1.0},
    }
    groups = []
    for key, members in buckets.items():
        if members:
            groups.append({
                "name": key,
                "params": [p for _, p in members],
                "param_names": [n for n, _ in members],
                **settings[key],
            })
    return groups


def build_optimizer(model: nn.Module, optim_cfg, lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the reference groups; fused on CUDA (one kernel for all parameters)."""
    groups = parameter_groups(model, optim_cfg.weight_decay, optim_cfg.w0_lr_scale)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    extra = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=lr, betas=(optim_cfg.beta1, optim_cfg.beta2), eps=optim_cfg.eps, **extra)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)

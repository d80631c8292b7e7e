"""Vocabulary resize: fit a (text) RWKV-7 onto a music vocabulary before fine-tuning.

The rows of tokens that survive (the first ``keep`` ids) are copied. New rows are initialised so
that the pretrained body sees familiar inputs and the new tokens start neutral:
- ``emb``: the mean of the kept embedding rows plus small Gaussian noise (std = 0.1 x the kept
  rows' per-channel std). LN0 normalises each row, so the noise, not the shared mean, tells the
  new tokens apart; rows stay in the scale the body was trained on.
- ``head``: small Gaussian rows (std 1e-3 / sqrt(C)), so every new token starts with a logit
  near 0 and none dominates before training.
- ``ffn.enn`` ("v8"): ones, which makes DeepEmbed a no-op for the new tokens.
With ``keep=0`` (a foreign vocabulary: the text ids mean nothing for music) the mean and std come
from all old rows and every row is new.
"""
from __future__ import annotations

import torch

from .config import ModelConfig
from .rwkv7 import RWKV7


def resize_vocab(model: RWKV7, vocab_size: int, *, keep: int | None = None, seed: int = 0) -> RWKV7:
    """A copy of ``model`` with ``vocab_size`` tokens (the original is not changed)."""
    old = model.config
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    keep = min(old.vocab_size, vocab_size) if keep is None else keep
    if not 0 <= keep <= min(old.vocab_size, vocab_size):
        raise ValueError(f"keep must be between 0 and {min(old.vocab_size, vocab_size)}, got {keep}")
    config = ModelConfig.from_dict({**old.to_dict(), "vocab_size": vocab_size})
    p = model.emb.weight
    with torch.device("meta"):
        new = RWKV7(config, init=False, wkv_backend=model.wkv_backend)
    new = new.to_empty(device=p.device).to(p.dtype)
    sd = {k: v for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    C = config.n_embd
    with torch.no_grad():
        reference_rows = (p[:keep] if keep > 0 else p).float().cpu()
        mean, std = reference_rows.mean(0), reference_rows.std(0, unbiased=False)
        n_new = vocab_size - keep

        def extend(table: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
            return torch.cat([table[:keep].float().cpu(), fresh]).to(table.dtype)

        sd["emb.weight"] = extend(sd["emb.weight"], mean + 0.1 * std * torch.randn(n_new, C, generator=gen))
        sd["head.weight"] = extend(sd["head.weight"], torch.randn(n_new, C, generator=gen) * (1e-3 / C**0.5))
        for k in list(sd):
            if k.endswith("ffn.enn.weight"):
                sd[k] = extend(sd[k], torch.ones(n_new, C))
    new.load_state_dict({k: v.to(p.device) for k, v in sd.items()})
    new.train(model.training)
    return new

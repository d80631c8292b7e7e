"""PianoMuseRWKV: the public model wrapper (strategy strings, training forward, RNN step, generate).

    model = PianoMuseRWKV("runs/x/checkpoints/latest-step/model.pth", strategy="cpu fp32")
    new_tokens, state = model.generate(prompt_ids, max_new_tokens=256)

In training mode, ``model(input_ids, ctx_lengths=...)`` returns only the completion positions'
logits [M, V]: hidden states are sliced with ``completion_mask`` before the head ("physical
slicing"), and ``engine.model.loss.completion_loss(logits, input_ids, mask)`` pairs them with
their targets using the same mask.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .checkpoint import load_checkpoint, save_checkpoint
from .config import ModelConfig
from .loss import completion_mask
from .rwkv7 import RWKV7
from .state import RWKVState

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
STRATEGIES = ("cpu fp32", "cpu bf16", "cuda bf16", "cuda fp32")


class StrategyError(ValueError):
    """A strategy string that cannot run here (one clear sentence)."""


def parse_strategy(strategy: str) -> tuple[torch.device, torch.dtype]:
    """"cpu fp32" | "cpu bf16" | "cuda bf16" | "cuda fp32" (optionally "cuda:N ...") -> (device, dtype)."""
    parts = strategy.split() if isinstance(strategy, str) else []
    if len(parts) != 2 or parts[1] not in DTYPES or parts[0].split(":")[0] not in ("cpu", "cuda"):
        raise StrategyError(f"unknown strategy {strategy!r}; use one of {', '.join(repr(s) for s in STRATEGIES)}")
    device = torch.device(parts[0])
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise StrategyError(f"strategy {strategy!r} needs an NVIDIA GPU but PyTorch sees none here; use 'cpu fp32' or 'cpu bf16'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise StrategyError(f"strategy {strategy!r} asks for GPU {device.index} but only {torch.cuda.device_count()} are visible")
    return device, DTYPES[parts[1]]


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 0.95, top_k: int = 0, generator: torch.Generator | None = None) -> int:
    """One token from logits [V] with the generation sampler (``engine.generate.sampling``); temperature 0 is greedy."""
    from engine.generate.sampling import SamplingConfig, sample_token  # the one sampler

    return sample_token(logits.float(), SamplingConfig(temperature=max(0.0, temperature), top_p=top_p if 0 < top_p <= 1 else 1.0,
                                                       top_k=top_k), generator)


class PianoMuseRWKV(nn.Module):
    """An RWKV-7 / "v8" model on a device and dtype given by a strategy string.

    ``model_path``: a checkpoint (.pth; PianoMuse or official). ``config``: a ModelConfig or dict
    for a fresh model (official init); with ``model_path`` it must match the file.
    """

    def __init__(self, model_path=None, strategy: str = "cpu fp32", config: ModelConfig | dict | None = None, *, wkv_backend: str = "auto"):
        super().__init__()
        self.strategy = strategy
        self.device, self.dtype = parse_strategy(strategy)
        if isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        if model_path is not None:
            model, sidecar = load_checkpoint(model_path, device=self.device, dtype=self.dtype, config=config, wkv_backend=wkv_backend)
        elif config is not None:
            model = RWKV7(config, wkv_backend=wkv_backend).to(device=self.device, dtype=self.dtype)
            sidecar = {"model": config.to_dict(), "tokenizer": None, "extra": {}}
        else:
            raise ValueError("PianoMuseRWKV needs a model_path (a .pth checkpoint) or a config for a fresh model")
        self.model: RWKV7 = model
        self.tokenizer_config: dict | None = sidecar.get("tokenizer")
        self.extra: dict = sidecar.get("extra") or {}
        self.train(False)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def save(self, path, tokenizer: dict | None = None, extra: dict | None = None):
        """Write NAME.pth (official state_dict) + NAME.json (config, tokenizer, extra)."""
        tok = tokenizer if tokenizer is not None else self.tokenizer_config
        return save_checkpoint(self.model, path, tokenizer=tok, extra=extra if extra is not None else self.extra)

    def _ids(self, input_ids) -> torch.Tensor:
        ids = torch.as_tensor(input_ids, dtype=torch.long, device=self.device)
        return ids.unsqueeze(0) if ids.dim() == 1 else ids

    def forward(self, input_ids, ctx_lengths=None, attention_mask=None, padding_token_id: int = 0):
        """Training mode with ``ctx_lengths``: logits [M, V] of the completion positions only.

        Otherwise logits [B, T, V] for every position.
        """
        ids = self._ids(input_ids)
        if self.training and ctx_lengths is not None:
            h, _ = self.model.hidden(ids, return_state=False)
            ctx = torch.as_tensor(ctx_lengths, device=ids.device)
            mask = attention_mask.to(ids.device) if attention_mask is not None else None
            return self.model.head(h[completion_mask(ids, ctx, mask, padding_token_id)])
        return self.model(ids)

    def init_state(self, batch_size: int = 1) -> RWKVState:
        return self.model.init_state(batch_size)

    def step(self, tokens, state: RWKVState):
        with torch.inference_mode():
            return self.model.step(tokens, state)

    @torch.inference_mode()
    def prefill(self, tokens, state: RWKVState | None = None):
        """Run a prompt [T] in parallel mode -> (logits of its last position [V], state)."""
        ids = self._ids(tokens)
        if ids.shape[1] == 0:
            raise ValueError("prefill needs at least one token")
        logits, state = self.model(ids, state=state, return_state=True)
        return logits[0, -1], state

    @torch.inference_mode()
    def generate(self, context_tokens, max_new_tokens: int = 256, temperature: float = 1.0, top_p: float = 0.95, top_k: int = 0, seed: int | None = None, state: RWKVState | None = None):
        """Prefill ``context_tokens`` in parallel mode, then sample ``max_new_tokens`` in RNN mode.

        Returns (new_tokens as a list of ints, state after the last new token has been fed).
        ``state`` continues an earlier call (the context then follows what that call produced).
        """
        context = [int(t) for t in context_tokens]
        if not context:
            raise ValueError("generate needs at least one context token (e.g. the tokenizer's BOS id)")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        logits, state = self.prefill(context, state)
        new_tokens: list[int] = []
        for _ in range(max_new_tokens):
            token = sample_logits(logits, temperature, top_p, top_k, generator)
            new_tokens.append(token)
            out, state = self.model.step(torch.tensor([token], device=self.device), state)
            logits = out[0]
        return new_tokens, state

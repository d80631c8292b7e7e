"""ModelConfig: the shape of an RWKV-7 ("x070") or "v8" (x070 + DeepEmbed, "x080") model.

Low-rank sizes default to what released models use at the same width (spec section 5:
C=768 -> 64/64/32/128, C=2048 -> 96/96/64/256). Other widths use the RWKV-LM reference's
suggestion, rounded to a multiple of 32 and at least 32:
    dim_w = dim_a = 2.5 sqrt(C),  dim_v = 1.7 sqrt(C),  dim_g = 0.6 C^0.8.
When a checkpoint is loaded the sizes are always read from its tensor shapes, never from this rule.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

ARCHS = ("x070", "x080")
LOW_RANK = ("dim_w", "dim_a", "dim_v", "dim_g")  # None picks the released-model default for the width

# (dim_w, dim_a, dim_v, dim_g) of released RWKV-7 models, by width
RELEASED_LOW_RANK = {768: (64, 64, 32, 128), 2048: (96, 96, 64, 256)}


class ConfigError(ValueError):
    """A model configuration that cannot describe an RWKV-7 model (one clear sentence)."""


def _round32(x: float) -> int:
    return max(32, int(round(x / 32)) * 32)


def default_low_rank(n_embd: int) -> tuple[int, int, int, int]:
    """(dim_w, dim_a, dim_v, dim_g) for a fresh model of width ``n_embd``."""
    if n_embd in RELEASED_LOW_RANK:
        return RELEASED_LOW_RANK[n_embd]
    root = n_embd**0.5
    return _round32(2.5 * root), _round32(2.5 * root), _round32(1.7 * root), _round32(0.6 * n_embd**0.8)


def check_head_size_env(head_size: int) -> None:
    """RWKV_HEAD_SIZE (used by RWKV tooling to build kernels) must agree with the model, if set."""
    env = os.environ.get("RWKV_HEAD_SIZE")
    if env is None or env.strip() == "":
        return
    try:
        wanted = int(env)
    except ValueError:
        raise ConfigError(f"RWKV_HEAD_SIZE={env!r} is not an integer; unset it or set it to the model's head size {head_size}") from None
    if wanted != head_size:
        raise ConfigError(
            f"RWKV_HEAD_SIZE={wanted} but this model has head size {head_size}; unset RWKV_HEAD_SIZE or set it to {head_size}"
        )


@dataclass
class ModelConfig:
    arch: str = "x070"
    n_layer: int = 6
    n_embd: int = 256
    vocab_size: int = 512
    head_size: int = 64
    dim_w: int | None = None
    dim_a: int | None = None
    dim_v: int | None = None
    dim_g: int | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown architecture {self.arch!r}; use 'x070' (RWKV-7) or 'x080' (v8: x070 + DeepEmbed)")
        for name in ("n_layer", "n_embd", "vocab_size", "head_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.head_size != 0:
            raise ConfigError(
                f"head_size {self.head_size} does not divide n_embd {self.n_embd}; pick a width that is a multiple of the head size (e.g. {self.head_size * max(1, round(self.n_embd / self.head_size))})"
            )
        defaults = default_low_rank(self.n_embd)
        for name, default in zip(LOW_RANK, defaults):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, default)
            elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    @property
    def deep_embed(self) -> bool:
        """True for "v8" (x080): each ChannelMix output is scaled by a per-token table ffn.enn."""
        return self.arch == "x080"

    def parameter_count(self) -> int:
        """Spec section 5: 2VC + 4C + L(19C + 12C^2 + 2C(Dw+Dv+Da+Dg)) (+ LVC for v8)."""
        C, V, L = self.n_embd, self.vocab_size, self.n_layer
        per_layer = 19 * C + 12 * C * C + 2 * C * (self.dim_w + self.dim_v + self.dim_a + self.dim_g)
        total = 2 * V * C + 4 * C + L * per_layer
        if self.deep_embed:
            total += L * V * C
        return total

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys {unknown}; allowed keys are {sorted(known)}")
        return cls(**data)

    def describe(self) -> str:
        name = "RWKV-7 x070" if self.arch == "x070" else "v8 (x070 + DeepEmbed)"
        return f"{name} L{self.n_layer}-D{self.n_embd} (heads {self.n_head}x{self.head_size}, vocab {self.vocab_size})"

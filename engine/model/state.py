"""RWKVState: the recurrent state of a whole model for a batch of sequences (spec section 4).

Per layer and sequence: the previous token's LN1 output (TimeMix shift), the WKV matrix state
S [H, N, N] (always fp32: it accumulates products of decays close to 1), and the previous token's
LN2 output (ChannelMix shift). Layers are stacked on the first dimension.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(repr=False)
class RWKVState:
    att_shift: torch.Tensor  # [L, B, C] model dtype
    wkv: torch.Tensor  # [L, B, H, N, N] fp32
    ffn_shift: torch.Tensor  # [L, B, C] model dtype

    @classmethod
    def zeros(cls, n_layer: int, batch_size: int, n_embd: int, head_size: int, *, dtype=torch.float32, device="cpu") -> "RWKVState":
        H = n_embd // head_size
        return cls(
            att_shift=torch.zeros(n_layer, batch_size, n_embd, dtype=dtype, device=device),
            wkv=torch.zeros(n_layer, batch_size, H, head_size, head_size, dtype=torch.float32, device=device),
            ffn_shift=torch.zeros(n_layer, batch_size, n_embd, dtype=dtype, device=device),
        )

    def __repr__(self) -> str:
        L, B, H, N, _ = self.wkv.shape
        return f"RWKVState(layers={L}, batch={B}, heads={H}x{N}, shift dtype={self.att_shift.dtype}, device={self.wkv.device})"

    @property
    def batch_size(self) -> int:
        return self.wkv.shape[1]

    @property
    def n_layer(self) -> int:
        return self.wkv.shape[0]

    @property
    def device(self) -> torch.device:
        return self.wkv.device

    def clone(self) -> "RWKVState":
        return RWKVState(self.att_shift.clone(), self.wkv.clone(), self.ffn_shift.clone())

    def detach(self) -> "RWKVState":
        """Cut the autograd graph (truncated BPTT across training segments)."""
        return RWKVState(self.att_shift.detach(), self.wkv.detach(), self.ffn_shift.detach())

    def select(self, idx) -> "RWKVState":
        """The sequences at ``idx`` (index tensor or list), in that order."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.wkv.device)
        return RWKVState(self.att_shift[:, idx], self.wkv[:, idx], self.ffn_shift[:, idx])

    def repeat(self, k: int) -> "RWKVState":
        """Each sequence repeated ``k`` times in place order (row b becomes rows b*k .. b*k+k-1)."""
        return RWKVState(
            self.att_shift.repeat_interleave(k, dim=1),
            self.wkv.repeat_interleave(k, dim=1),
            self.ffn_shift.repeat_interleave(k, dim=1),
        )

    def to(self, device=None, dtype=None) -> "RWKVState":
        """Move to ``device``; ``dtype`` changes the shift slots only (the WKV state stays fp32)."""
        return RWKVState(
            self.att_shift.to(device=device, dtype=dtype),
            self.wkv.to(device=device),
            self.ffn_shift.to(device=device, dtype=dtype),
        )

    @staticmethod
    def cat(states: list["RWKVState"]) -> "RWKVState":
        """Join batches of sequences (the inverse of ``select`` over a partition)."""
        return RWKVState(
            torch.cat([s.att_shift for s in states], dim=1),
            torch.cat([s.wkv for s in states], dim=1),
            torch.cat([s.ffn_shift for s in states], dim=1),
        )

    def layer(self, l: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.att_shift[l], self.wkv[l], self.ffn_shift[l]

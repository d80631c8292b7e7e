"""Weight averaging: an exponential moving average (EMA) of the weights a run trains.

With ``train.ema_decay = d`` the trainer keeps, beside the weights it trains, their average in fp32
on the training device. It moves once per applied optimizer step, after the update (a step skipped
for a non-finite loss leaves it alone), so gradient accumulation gives one update per step and
every DDP process, whose weights are identical, computes the identical average; under FSDP each
process averages its own shard. The average is bias-corrected: after t updates it is exactly

    ema_t = sum_{i=1..t} d^(t-i) * w_i * (1 - d) / (1 - d^t)

the weighted mean of the weights after steps 1..t (the first update copies w_1), so a short run is
not pulled toward its random initial weights as the plain recursion from w_0 would be (it keeps a
share d^t of them: 37 % after 1000 steps at d = 0.999). The update that gives it is
``ema += (w - ema) * (1 - d) / (1 - d^t)``.

The checkpoint's trainer.pt holds the average (full tensors, its decay and update count), so a
resumed run continues it bit for bit; model.pth keeps the raw weights a resume trains on.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .distributed import full_tensor, shard_like


class WeightAverage:
    """The bias-corrected EMA of a model's trainable parameters (frozen ones never change)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"an EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        with torch.no_grad():
            self.weights = [p.detach().to(torch.float32, copy=True) for p in self.params]

    def update_weight(self) -> float:
        """How far the next update moves the average toward the weights: (1 - d) / (1 - d^t)."""
        return (1.0 - self.decay) / (1.0 - self.decay ** (self.updates + 1))

    @torch.no_grad()
    def update(self) -> None:
        """Fold in the weights after one optimizer step."""
        weight = self.update_weight()
        torch._foreach_lerp_(self.weights, [p.detach().float() for p in self.params], weight)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block and its own ones again after it
        (swapped tensor by tensor, exactly, with one parameter's copy as the only extra memory)."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    @torch.no_grad()
    def _swap(self) -> None:
        for p, average in zip(self.params, self.weights):
            held = p.detach().clone()
            p.copy_(average)
            average.copy_(held)

    def state_dict(self) -> dict:
        """Decay, update count and the averaged weights as full CPU tensors under their parameter
        names (gathers shards: under FSDP every process must call it)."""
        weights = {name: full_tensor(w).detach().to("cpu", copy=True) for name, w in zip(self.names, self.weights)}
        return {"decay": self.decay, "updates": self.updates, "weights": weights}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Continue a saved average (each process takes its shard of the full tensors)."""
        saved = state["weights"]
        if sorted(saved) != sorted(self.names):
            missing = sorted(set(self.names) - set(saved)) or sorted(set(saved) - set(self.names))
            raise ValueError(f"the saved weight average does not fit this model (first differing tensor: {missing[0]})")
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        for name, average, p in zip(self.names, self.weights, self.params):
            average.copy_(shard_like(saved[name].to(torch.float32), p))

    def restart(self) -> None:
        """Forget the history: the next update starts the average from that step's weights."""
        self.updates = 0

    def resume_note(self, saved: dict | None, step: int) -> str:
        """Continue ``saved`` (a checkpoint's average) when it was kept with this decay; otherwise
        start afresh. Returns one sentence saying what happened when it is not a plain continuation."""
        if saved is None:
            self.restart()
            return (f"the checkpoint has no weight average (it was trained with train.ema_decay=0), so the average "
                    f"starts from the weights after step {step + 1}")
        if float(saved["decay"]) != self.decay:
            self.restart()
            return (f"train.ema_decay changed from {saved['decay']} to {self.decay}, so the weight average starts "
                    f"again from the weights after step {step + 1}")
        self.load_state_dict(saved)
        return ""


def averaged_model_state(model_state: dict[str, torch.Tensor], saved: dict) -> dict[str, torch.Tensor]:
    """A model's state_dict with its trainable tensors replaced by a saved average (``state_dict()``
    of a WeightAverage), each in the dtype the model's own tensor has: the weights to export."""
    out = dict(model_state)
    for name, average in saved["weights"].items():
        if name not in out:
            raise ValueError(f"the saved weight average has a tensor {name!r} that the model does not have")
        out[name] = average.to(out[name].dtype)
    return out

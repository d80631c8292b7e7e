"""torch.distributed for torchrun launches: who am I, where do I run, and helpers that are
no-ops in a single process. DDP by default, FSDP (``train.parallel=fsdp``) where the model's
parameters, gradients and AdamW state should not be replicated; only rank 0 writes logs and
checkpoints, and checkpoints always hold full (unsharded) tensors, so a run resumes on any
number of processes in either mode."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU); single process otherwise."""
    if not launched_by_torchrun():
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """Send a picklable object from rank ``src`` to every rank (e.g. the run directory)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


# ---- FSDP (fully_shard, the per-parameter sharding of torch.distributed.fsdp) ---------------


def shard_fsdp(objective: nn.Module, blocks, device: torch.device, info: DistInfo) -> nn.Module:
    """Shard every block on its own (its parameters are gathered just before its forward and
    freed after) and the rest (embedding, head, final LayerNorm) with the objective at the root,
    whose forward is the training step's entry point."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # a block returns layer 0's value (v_first) as a view of its projections; FSDP warns that an
    # in-place op on a view would skip its backward hook, and the model never does one
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device.type, (info.world_size,))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(objective, mesh=mesh)
    return objective


def reshard(objective: nn.Module) -> None:
    """Free every gathered (unsharded) parameter copy. A forward without backward leaves the root's
    gathered, and a later forward would use that copy even after the shards were written to
    (validation swapping the weight average in and out does just that)."""
    from torch.distributed.fsdp import FSDPModule

    for module in objective.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_tensor(t):
    """A DTensor gathered to its full value (a collective: every rank must call it in the same
    order); anything else as it is."""
    return t.full_tensor() if _is_dtensor(t) else t


def full_model_state(model: nn.Module) -> dict:
    """The model's state_dict with full tensors (official checkpoint keys, as unsharded)."""
    return {k: full_tensor(v.detach()) for k, v in model.state_dict().items()}


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with full tensors: the same layout a single process writes."""
    state = optimizer.state_dict()
    state["state"] = {i: {k: full_tensor(v) for k, v in s.items()} for i, s in state["state"].items()}
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a full optimizer state (as written by ``full_optimizer_state`` or by a single
    process) into an optimizer whose parameters may be sharded: each per-parameter tensor the
    shape of its parameter is cut to this rank's shard, locally (every rank read the file)."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not _is_dtensor(p) or p not in optimizer.state:
                continue
            slots = optimizer.state[p]
            for key, value in slots.items():
                if isinstance(value, torch.Tensor) and not _is_dtensor(value) and tuple(value.shape) == tuple(p.shape):
                    slots[key] = shard_like(value, p)


def shard_like(value: torch.Tensor, like) -> torch.Tensor:
    """A full tensor cut the way ``like`` (a sharded parameter) is: this rank's shard, locally
    (every rank holds the full value); for an unsharded ``like``, the value on its device."""
    if not _is_dtensor(like):
        return value.to(like.device)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(like.to_local().device), like.device_mesh, like.placements, src_data_rank=None)

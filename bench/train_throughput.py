"""Training-step throughput and peak memory of the PianoMuse trainer's step, on the GPU.

    python bench/train_throughput.py [--shapes L12-D768-V2048-T2048-B16,...] [--steps 10] [--peer chunked]
    torchrun --nproc_per_node 2 bench/train_throughput.py --ddp --shapes L12-D512-V512-T4096-B8

A step is exactly what engine.train.trainer runs: bf16 autocast over fp32 master weights,
the TrainingObjective (hidden states -> head on the loss positions -> summed cross-entropy),
backward, gradient clipping, fused AdamW with the reference groups, and the one host read of
loss and grad norm the NaN guard needs. "fwd+bwd" times the same without clipping and the
optimizer, which is what rwkv7-spec.md section 9 reports for the reference trainer.

The peer in the same run is the same step with the PyTorch chunked WKV backend (what you get
without the CUDA kernel); the reference trainer's numbers are quoted from the spec (measured on
an H200 with torch 2.11 + CUDA 13.0). Tokens are synthetic (uniform random ids): throughput does
not depend on the token values. With --ddp (under torchrun) the model is wrapped in DDP exactly
as the trainer does, every process runs the given batch, and the table shows the global rate.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.model import RWKV7, ModelConfig  # noqa: E402
from engine.train.config import OptimSection  # noqa: E402
from engine.train.objective import TrainingObjective, enable_activation_checkpointing  # noqa: E402
from engine.train.optim import build_optimizer  # noqa: E402

# rwkv7-spec.md section 9: the reference trainer, one forward+backward (no optimizer), bf16, H200
SPEC = {
    "L12-D768-V2048-T2048-B16": (116.0, 282e3, 22.9),
    "L12-D768-V65536-T512-B16": (59.4, 138e3, 8.4),
    "L24-D1024-V2048-T2048-B16": (284.0, 116e3, 60.8),
    "L12-D512-V512-T4096-B8": (134.0, 245e3, 15.3),
}


def parse_shape(text: str) -> dict:
    parts = dict((p[0], int(p[1:])) for p in text.split("-"))
    return {"L": parts["L"], "D": parts["D"], "V": parts["V"], "T": parts["T"], "B": parts["B"]}


def measure(shape: dict, backend: str, steps: int, warmup: int, ckpt: bool, ddp: bool, device: torch.device) -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=shape["L"], n_embd=shape["D"], vocab_size=shape["V"], head_size=64)
    model = RWKV7(cfg, wkv_backend=backend).to(device)
    model.train()
    for p in model.blocks[0].att.v0, model.blocks[0].att.v1, model.blocks[0].att.v2:
        p.requires_grad_(False)  # unused by layer 0; the trainer freezes them too
    if ckpt:
        enable_activation_checkpointing(model)
    objective = TrainingObjective(model)
    if ddp:
        objective = torch.nn.parallel.DistributedDataParallel(objective, device_ids=[device.index])
    optimizer = build_optimizer(model, OptimSection(), 6e-4, device)
    params = [p for p in model.parameters() if p.requires_grad]
    B, T = shape["B"], shape["T"]
    ids = torch.randint(3, shape["V"], (B, T), device=device)
    mask = torch.ones(B, T, dtype=torch.bool, device=device)
    mask[:, -1] = False
    targets = F.pad(ids, (0, 1))
    n_targets = int(mask.sum())

    def fwd_bwd():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss_sum, _ = objective(ids, mask, targets)
        (loss_sum / n_targets).backward()
        return loss_sum

    def full_step():
        loss_sum = fwd_bwd()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        torch.stack([loss_sum.detach().float(), norm.float()]).tolist()  # the trainer's one sync
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(fn) -> float:
        for _ in range(warmup):
            fn()
            optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            fn()
            optimizer.zero_grad(set_to_none=True)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / steps

    fb_ms = timed(fwd_bwd)
    torch.cuda.reset_peak_memory_stats(device)
    step_ms = timed(full_step)
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    del model, objective, optimizer
    torch.cuda.empty_cache()
    return {"fb_ms": fb_ms, "step_ms": step_ms, "peak_gib": peak, "params": cfg.parameter_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(SPEC))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peer", default="chunked", help="WKV backend of the same-run peer ('' for none)")
    parser.add_argument("--peer-shapes", default="L12-D512-V512-T4096-B8", help="shapes the (slow) peer also runs")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--ddp", action="store_true", help="wrap in DDP (run under torchrun)")
    args = parser.parse_args()

    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if args.ddp and world > 1:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        torch.distributed.init_process_group("nccl")
        device = torch.device("cuda", local)
    else:
        device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    if rank == 0:
        print(f"# {torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"processes {world}, activation checkpointing {'on' if args.activation_checkpointing else 'off'}, "
              f"{time.strftime('%Y-%m-%d')}")
        print("| shape | params | WKV backend | fwd+bwd ms | full step ms | tokens/s (full step) | peak GiB | reference fwd+bwd ms | reference tokens/s | reference peak GiB | ours fwd+bwd vs reference |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
    peer_shapes = set(args.peer_shapes.split(",")) if args.peer else set()
    for name in args.shapes.split(","):
        shape = parse_shape(name)
        for backend in ["cuda"] + ([args.peer] if name in peer_shapes else []):
            try:
                r = measure(shape, backend, args.steps, args.warmup, args.activation_checkpointing, args.ddp and world > 1, device)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                if rank == 0:
                    print(f"| {name} | - | {backend} | OOM | OOM | - | - | - | - | - | - |")
                continue
            except (RuntimeError, NotImplementedError) as exc:  # a peer that cannot run this shape/dtype
                torch.cuda.empty_cache()
                if rank == 0:
                    print(f"| {name} | - | {backend} | fails: {str(exc).splitlines()[0][:80]} | - | - | - | - | - | - | - |")
                continue
            tokens = shape["B"] * shape["T"] * world
            ref = SPEC.get(name)
            ref_cols = f"{ref[0]:.1f} | {ref[1] / 1e3:.0f}k | {ref[2]:.1f} | {ref[0] / r['fb_ms']:.2f}x" if ref else "- | - | - | -"
            if rank == 0:
                print(f"| {name} | {r['params'] / 1e6:.1f}M | {backend} | {r['fb_ms']:.1f} | {r['step_ms']:.1f} | "
                      f"{tokens / r['step_ms'] * 1e3 / 1e3:.0f}k | {r['peak_gib']:.1f} | {ref_cols} |", flush=True)
    if args.ddp and world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

"""Tokens/s and peak memory of full training steps, next to the reference trainer (rwkv7-spec.md section 9).

    python3 bench/train_throughput.py                       # the four spec shapes, one GPU
    python3 bench/train_throughput.py --shapes L12-D512-V512-T4096-B8 --activation-checkpointing
    python3 bench/train_throughput.py --tiny                # CPU smoke run

One step is what engine.train.trainer runs for a batch: the model in train mode with layer 0's
unused value-residual parameters frozen, bf16 autocast over fp32 master weights on CUDA (fp32 on
CPU), the TrainingObjective (head only on loss positions, summed cross-entropy scaled by
1/targets), backward, gradient clipping, fused AdamW over the reference parameter groups. The
loss is the plain LM loss over the whole sequence (every position but the last), on uniform
random tokens, as in the reference measurement. Tokens stay on the device (the trainer builds and
copies batches off the critical path).

Timing: CUDA events at each step's start, after backward and at its end (no host sync inside a
step; one synchronize after the timed steps); median over --steps after --warmup. The trainer
itself reads loss and grad norm once per step for its NaN guard; --trainer-sync adds that read so
its cost can be seen. Peak memory is torch.cuda.max_memory_allocated over the timed steps.

The reference numbers time forward+backward only (no optimizer), so the "ours/ref" speed ratio
is given both for our full step (conservative) and for our forward+backward part.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench._train_bench import (
    BenchError, fmt_rate, markdown_table, parse_shape, pick_device, run_header, write_outputs,
)
from engine.model import RWKV7, ModelConfig
from engine.train.config import OptimSection
from engine.train.objective import TrainingObjective, enable_activation_checkpointing, lm_loss_mask
from engine.train.optim import build_optimizer
from engine.train.trainer import freeze_unused_parameters, resolve_precision

# rwkv7-spec.md section 9: the reference trainer, one forward+backward, bf16, one H200
# (step ms, tokens/s, peak GiB)
REFERENCE = {
    "L12-D768-V2048-T2048-B16": (116.0, 282e3, 22.9),
    "L12-D768-V65536-T512-B16": (59.4, 138e3, 8.4),
    "L24-D1024-V2048-T2048-B16": (284.0, 116e3, 60.8),
    "L12-D512-V512-T4096-B8": (134.0, 245e3, 15.3),
}
TINY_SHAPES = "L2-D128-V256-T64-B2"

COLUMNS = ["shape", "params", "WKV", "step ms", "fwd+bwd ms", "tokens/s", "peak GiB",
           "ref step ms (fwd+bwd)", "ref tokens/s", "ref peak GiB",
           "speed ours/ref (full step)", "speed ours/ref (fwd+bwd)", "peak ours/ref"]


class StepClock:
    """Marks on the device timeline: CUDA events (no host sync), or wall time on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else (b - a) * 1e3

    def wait(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def measure(shape, device: torch.device, backend: str, steps: int, warmup: int, checkpointing: bool,
            compile_model: bool, trainer_sync: bool, profile: str | None = None, wkv_recompute: bool = False,
            fused_head: bool | None = None) -> dict:
    torch.manual_seed(0)
    model = RWKV7(ModelConfig(n_layer=shape.n_layer, n_embd=shape.n_embd, vocab_size=shape.vocab_size, head_size=64),
                  wkv_backend=backend).to(device)
    model.train()
    freeze_unused_parameters(model, device)
    if checkpointing:
        enable_activation_checkpointing(model)
    if compile_model:
        model.compile_blocks()  # what the trainer does with train.compile on
    if wkv_recompute:
        model.set_wkv_recompute()  # train.wkv_recompute
    objective = TrainingObjective(model, fused_head=fused_head)
    optimizer = build_optimizer(model, OptimSection(), 1e-3, device)
    params = [p for p in model.parameters() if p.requires_grad]
    autocast_dtype = resolve_precision("auto", device)

    ids = torch.randint(3, shape.vocab_size, (shape.batch, shape.ctx_len), device=device)
    mask = lm_loss_mask(ids, None)
    targets = torch.nn.functional.pad(ids, (0, 1))
    scale = 1.0 / int(mask.sum())  # host read before timing, like the trainer's plan (counted on the CPU)
    clock = StepClock(device)

    def step(marks: list) -> None:
        marks.append(clock.mark())
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss_sum, _ = objective(ids, mask, targets)
        (loss_sum * scale).backward()
        marks.append(clock.mark())
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        if trainer_sync:
            torch.stack([loss_sum.detach().float(), norm.float()]).tolist()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(clock.mark())

    for _ in range(warmup):
        step([])
    clock.wait()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    marks: list = []
    for _ in range(steps):
        step(marks)
    clock.wait()
    if profile:
        write_profile(step, shape.name, profile)
    full = [clock.ms(marks[i], marks[i + 2]) for i in range(0, len(marks), 3)]
    fwd_bwd = [clock.ms(marks[i], marks[i + 1]) for i in range(0, len(marks), 3)]
    step_ms = statistics.median(full)
    result = {
        "shape": shape.name, "params": model.parameter_count(), "wkv_backend": backend,
        "step_ms": step_ms, "fwd_bwd_ms": statistics.median(fwd_bwd),
        "step_ms_all": full, "tokens_per_s": shape.batch * shape.ctx_len / step_ms * 1e3,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    del model, objective, optimizer, params
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def write_profile(step, name: str, path: str) -> None:
    """One more step under torch.profiler: the top GPU kernels by time, appended to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step([])
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70)
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"\n## {name}\n\n{table}\n")


def table_row(r: dict) -> list[str]:
    ref = REFERENCE.get(r["shape"])
    peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
    row = [r["shape"], f"{r['params'] / 1e6:.1f}M", r["wkv_backend"], f"{r['step_ms']:.1f}", f"{r['fwd_bwd_ms']:.1f}",
           fmt_rate(r["tokens_per_s"]), peak]
    if ref is None:
        return row + ["-"] * 6
    ref_ms, ref_rate, ref_peak = ref
    peak_ratio = f"{r['peak_gib'] / ref_peak:.2f}x" if r["peak_gib"] is not None else "-"
    return row + [f"{ref_ms:.1f}", fmt_rate(ref_rate), f"{ref_peak:.1f}", f"{r['tokens_per_s'] / ref_rate:.2f}x",
                  f"{ref_ms / r['fwd_bwd_ms']:.2f}x", peak_ratio]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=None, help="comma-separated, e.g. L12-D512-V512-T4096-B8 (default: the spec's four)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes that run on a CPU in seconds (smoke test)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per shape (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--wkv-backend", default="auto", choices=("auto", "cuda", "chunked"))
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the block parts around the WKV kernel (the trainer's train.compile; default as the trainer: on CUDA)")
    parser.add_argument("--fused-head", action=argparse.BooleanOptionalAction, default=None,
                        help="the chunked head + cross-entropy (engine.model.loss.linear_cross_entropy; default as the trainer: on CUDA)")
    parser.add_argument("--wkv-recompute", action="store_true", help="the WKV operator saves only its inputs (train.wkv_recompute)")
    parser.add_argument("--memory-budget", type=float, default=None,
                        help="torch.compile's activation memory budget (torch._functorch.config.activation_memory_budget, 1.0 = its default): lower recomputes more in backward")
    parser.add_argument("--profile", default=None, help="append a torch.profiler kernel table of one extra step per shape to this file")
    parser.add_argument("--trainer-sync", action="store_true", help="add the trainer's one host read of loss and grad norm per step")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--out", default=None, help="append the markdown table to this file")
    parser.add_argument("--json", default=None, help="write every measurement (all step times) to this JSON file")
    args = parser.parse_args(argv)

    if args.steps < 1 or args.warmup < 0:
        raise BenchError("--steps must be at least 1 and --warmup at least 0")
    device = pick_device(args.device, args.tiny or args.shapes is not None)
    shapes = [parse_shape(s) for s in (args.shapes or (TINY_SHAPES if args.tiny else ",".join(REFERENCE))).split(",")]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    from engine.kernels.wkv7 import resolve_backend  # may build the CUDA kernels

    backend = resolve_backend(args.wkv_backend, device)
    if args.compile is None:
        args.compile = device.type == "cuda"
    if args.memory_budget is not None:
        import torch._functorch.config as functorch_config

        functorch_config.activation_memory_budget = args.memory_budget
    if args.fused_head is None:
        args.fused_head = device.type == "cuda"
    variant = os.environ.get("PIANOMUSE_WKV7_VARIANT", "default")
    options = (f"full training steps, median of {args.steps} after {args.warmup} warm-up; WKV {backend}; "
               f"activation checkpointing {'on' if args.activation_checkpointing else 'off'}; "
               f"compile {'on' if args.compile else 'off'}; fused head {'on' if args.fused_head else 'off'}; "
               f"WKV variant {variant}; compile memory budget {args.memory_budget or 'default'}; WKV recompute {'on' if args.wkv_recompute else 'off'}; trainer host sync {'on' if args.trainer_sync else 'off'}")
    header = run_header(device, options)
    print(f"# {header}\n")
    print(markdown_table(COLUMNS, []), flush=True)
    results, rows, failed = [], [], 0
    for shape in shapes:
        try:
            r = measure(shape, device, backend, args.steps, args.warmup, args.activation_checkpointing, args.compile,
                        args.trainer_sync, args.profile, args.wkv_recompute, args.fused_head)
        except torch.OutOfMemoryError:
            failed += 1
            torch.cuda.empty_cache()
            rows.append([shape.name, "-", backend, "OOM"] + ["-"] * (len(COLUMNS) - 4))
            results.append({"shape": shape.name, "error": "out of memory"})
        except (RuntimeError, NotImplementedError) as exc:  # e.g. a backend that lacks a dtype on this device
            failed += 1
            message = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
            rows.append([shape.name, "-", backend, f"fails: {message}"] + ["-"] * (len(COLUMNS) - 4))
            results.append({"shape": shape.name, "error": message})
        else:
            rows.append(table_row(r))
            results.append(r)
        print("| " + " | ".join(rows[-1]) + " |", flush=True)
    markdown = f"`python3 bench/train_throughput.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n\n{header}\n\n" \
               + markdown_table(COLUMNS, rows)
    write_outputs(markdown, {"header": header, "results": results}, args.out, args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

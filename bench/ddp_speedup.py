"""Data-parallel speed-up of the real trainer: the same model and global batch on 1 and on N processes.

    python3 bench/ddp_speedup.py                      # L12-D512 V512 T4096, global batch 16, 1 vs 2 GPUs
    python3 bench/ddp_speedup.py --objective lm --steps 30
    python3 bench/ddp_speedup.py --tiny               # CPU smoke run: gloo, 2 processes

Each run is engine.train.Trainer(...).fit(), launched the way torchrun would (RANK, WORLD_SIZE,
LOCAL_RANK and MASTER_ADDR/PORT set in processes started by torch.multiprocessing), so it
measures everything the trainer does per step: batch building in its background thread, pinned
copies, autocast forward/backward through DDP (NCCL on CUDA, gloo on CPU), the all-reduce of
loss and stop flag with the one host read, clipping, fused AdamW, the metrics line.

Data: by default a synthetic in-memory corpus of uniform random tokens (every sample exactly
--shape's T tokens), fed through the trainer's own TrainingFeed; only the function that opens the
token store (engine.train.trainer.open_feed) is swapped for one returning that feed, because a
real store needs the MIDI tokenizer (miditok), which the GPU machine lacks. --data PATH uses the
real store instead (needs miditok). Validation, auditions and periodic checkpoints are off; the
final checkpoint is written after the timed steps.

Same global batch on both runs: with --micro-batch M, 1 process accumulates batch/M micro-batches
per step and N processes accumulate batch/(M N) each; the default M = batch/N gives every
forward the same shape in both runs. Tokens/s = tokens of the steps after --warmup over the wall
time between the trainer's metric records (written after each step's host read).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.multiprocessing as mp

from bench._train_bench import (
    BenchError, fmt_rate, markdown_table, parse_shape, pick_device, run_header, write_outputs,
)

GOAL = 1.9  # issue 17: >= 1.9x on 2 GPUs for DDP (FSDP: its speed-up and memory are reported)
TINY_SHAPE = "L2-D128-V128-T64"


class RandomTokenVocabulary:
    """What the trainer asks of a tokenizer, for a corpus of random ids (no MIDI meaning)."""

    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def kind_ids(self, kind: str) -> list[int]:
        return []  # no token is a note: bits per note is not measured here

    def note_start_ids(self) -> list[int]:
        return []

    def to_config(self) -> dict:
        return {"format": "random-tokens", "vocab_size": self.vocab_size}


def random_token_feed(cfg, dist, vocab_size: int, n_samples: int):
    """A TrainingFeed over ``n_samples`` random sequences of ``data.ctx_len`` tokens (the stream cycles)."""
    from engine.data.windows import CompletionWindow, PackedChunk
    from engine.train.feed import TrainingFeed

    rng = np.random.default_rng(cfg.train.seed)
    T = cfg.data.ctx_len
    tokens = rng.integers(3, vocab_size, size=(n_samples, T), dtype=np.int64)
    if cfg.data.objective == "lm":
        samples = [PackedChunk(row, (0,)) for row in tokens]
    else:  # completion windows: the default 8 context bars -> 4 completion bars is 2/3 context
        samples = [CompletionWindow(row, ctx_len=2 * T // 3) for row in tokens]
    return TrainingFeed(cfg, RandomTokenVocabulary(vocab_size), samples, [], dist, None, source="random tokens")


def _train_process(rank: int, world: int, port: int, cfg_dict: dict, vocab_size: int | None, result_path: str,
                   cpu_threads: int) -> None:
    """One process of a run (spawned): join the group as torchrun would, train, rank 0 reports."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        os.environ.pop(key, None)
    if world > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import engine.train.trainer as trainer_module
    from engine.train.config import TrainConfig

    cfg = TrainConfig.from_dict(cfg_dict).validate()
    marks: list[dict] = []

    def on_metrics(record) -> None:  # engine.metric_records' typed records
        if record.kind == "train":
            marks.append({"step": record.step, "tokens": record.tokens, "t": time.perf_counter(),
                          "mem_peak": record.mem_peak, "loss": record.loss})

    # the 1-process CPU run happens in the calling process: put back what is changed here
    real_open_feed, threads_before = trainer_module.open_feed, torch.get_num_threads()
    if vocab_size is not None:
        n_samples = 4 * cfg.train.batch_size
        trainer_module.open_feed = lambda c, d, on_progress=None: random_token_feed(c, d, vocab_size, n_samples)
    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    try:
        result = trainer_module.Trainer(cfg, on_metrics=on_metrics).fit()
    finally:
        trainer_module.open_feed = real_open_feed
        torch.set_num_threads(threads_before)
    if rank == 0:
        Path(result_path).write_text(json.dumps({"status": result.status, "message": result.message, "marks": marks}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_world(world: int, cfg_dict: dict, vocab_size: int | None, work: Path, warmup: int, cpu_threads: int) -> dict:
    result_path = work / f"result-w{world}.json"
    cfg = json.loads(json.dumps(cfg_dict))
    cfg["run"]["root"] = str(work / f"runs-w{world}")
    run_args = (world, free_port(), cfg, vocab_size, str(result_path), cpu_threads)
    if world == 1 and cfg["train"]["device"] == "cpu":
        _train_process(0, *run_args)  # saves a process start in the CPU smoke run; on a GPU each run gets a fresh process
    else:
        mp.start_processes(_train_process, args=run_args, nprocs=world, join=True, start_method="spawn")
    report = json.loads(result_path.read_text())
    if report["status"] != "finished":
        raise RuntimeError(f"the {world}-process run ended {report['status']}: {report['message']}")
    marks = [m for m in report["marks"] if m["step"] >= warmup]
    if len(marks) < 2:
        raise RuntimeError(f"the {world}-process run logged too few steps after warm-up; raise --steps")
    step_ms = [(b["t"] - a["t"]) * 1e3 / (b["step"] - a["step"]) for a, b in zip(marks, marks[1:])]
    peak = marks[-1]["mem_peak"]
    return {
        "processes": world,
        "steps_timed": marks[-1]["step"] - marks[0]["step"],
        "tokens_per_s": (marks[-1]["tokens"] - marks[0]["tokens"]) / (marks[-1]["t"] - marks[0]["t"]),
        "step_ms_median": statistics.median(step_ms),
        "step_ms_all": step_ms,
        "peak_gib": peak / 2**30 if peak is not None else None,
        "losses": [m["loss"] for m in report["marks"]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default=None, help="model and sequence, e.g. L12-D512-V512-T4096 (default; --tiny: a small one)")
    parser.add_argument("--batch", type=int, default=None, help="global batch in sequences (default 16; --tiny 4)")
    parser.add_argument("--micro-batch", type=int, default=None, help="sequences per forward (default batch / nprocs)")
    parser.add_argument("--nprocs", type=int, default=2, help="processes (GPUs) of the data-parallel run, compared with 1")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20; --tiny 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 5; --tiny 1)")
    parser.add_argument("--objective", default="completion", choices=("completion", "lm"))
    parser.add_argument("--wkv-backend", default="auto", choices=("auto", "cuda", "chunked"))
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--parallel", default="ddp", choices=("ddp", "fsdp"),
                        help="the N-process run's train.parallel: ddp (replicated) or fsdp (sharded); the 1-process run is the same either way")
    parser.add_argument("--data", default=None, help="train on this token store / MIDI folder instead of random tokens (needs miditok)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU with gloo (smoke test)")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--keep-runs", default=None, help="keep the run directories under this folder")
    parser.add_argument("--out", default=None, help="append the markdown table to this file")
    parser.add_argument("--json", default=None, help="write all measurements to this JSON file")
    args = parser.parse_args(argv)

    device = pick_device(args.device, args.tiny)
    shape = parse_shape(args.shape or (TINY_SHAPE if args.tiny else "L12-D512-V512-T4096"), need_batch=False)
    batch = args.batch or (4 if args.tiny else 16)
    steps = args.steps if args.steps is not None else (3 if args.tiny else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 5)
    if args.nprocs < 2:
        raise BenchError("--nprocs must be at least 2 (the 1-process run is always made for comparison)")
    micro = args.micro_batch or batch // args.nprocs
    if micro < 1 or batch % (micro * args.nprocs):
        raise BenchError(f"--batch ({batch}) must be a multiple of --micro-batch x --nprocs ({micro} x {args.nprocs})")
    if steps < 2 or warmup < 1:
        raise BenchError("--steps must be at least 2 and --warmup at least 1 (the first step includes start-up)")
    if device.type == "cuda" and torch.cuda.device_count() < args.nprocs:
        raise BenchError(f"--nprocs {args.nprocs} needs that many GPUs but {torch.cuda.device_count()} are visible; use a machine with more GPUs or lower --nprocs")

    if importlib.util.find_spec("tomli_w") is None:  # the trainer writes the run's config.toml with it
        raise BenchError("the trainer needs the tomli-w package to write config.toml; pip install tomli-w (or carry its wheel) and rerun")
    cfg_dict = {
        "model": {"n_layer": shape.n_layer, "n_embd": shape.n_embd, "head_size": 64},
        "data": {"path": args.data or "", "objective": args.objective, "ctx_len": shape.ctx_len, "augment": False},
        "train": {"max_steps": warmup + steps, "batch_size": batch, "micro_batch_size": micro, "device": device.type,
                  "wkv_backend": args.wkv_backend, "activation_checkpointing": args.activation_checkpointing,
                  "parallel": args.parallel},
        "eval": {"val_every": 0, "audition_every": 0},
        "run": {"name": "ddp-speedup", "log_every": 1, "checkpoint_every": 0, "keep_checkpoints": 1},
    }
    # on a CPU the processes share the cores: one thread each, as spinning OpenMP threads on a
    # busy machine slow a run by an order of magnitude
    threads = 1 if device.type == "cpu" else 0
    vocab = None if args.data else shape.vocab_size

    options = (f"model {shape.name} ({args.objective} objective, {'store ' + args.data if args.data else 'random tokens'}), "
               f"global batch {batch}, micro-batch {micro}, {warmup} warm-up + {steps} timed steps, "
               f"activation checkpointing {'on' if args.activation_checkpointing else 'off'}, {args.parallel.upper()}")
    header = run_header(device, options)
    print(f"# {header}", flush=True)
    work = Path(args.keep_runs) if args.keep_runs else Path(tempfile.mkdtemp(prefix="pianomuse-ddp-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    try:
        for world in (1, args.nprocs):
            runs.append(run_world(world, cfg_dict, vocab, work, warmup, threads))
            print(f"# {world} process(es): {fmt_rate(runs[-1]['tokens_per_s'])} tokens/s", flush=True)
    finally:
        if not args.keep_runs:
            shutil.rmtree(work, ignore_errors=True)

    base = runs[0]["tokens_per_s"]
    rows = []
    for r in runs:
        accum = batch // (micro * r["processes"])
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        rows.append([str(r["processes"]), str(batch), f"{micro} x {accum}", f"{r['step_ms_median']:.1f}",
                     fmt_rate(r["tokens_per_s"]), peak, f"{r['tokens_per_s'] / base:.2f}x"])
    speedup = runs[-1]["tokens_per_s"] / base
    if device.type == "cuda":
        goal = f"goal >= {GOAL}x on 2 GPUs: {'met' if speedup >= GOAL else 'NOT met'}" if args.parallel == "ddp" else "no goal for FSDP: compare its memory"
        verdict = f"{args.parallel.upper()} speed-up on {args.nprocs} GPUs: {speedup:.2f}x ({goal})"
    else:
        verdict = (f"speed-up on {args.nprocs} CPU processes: {speedup:.2f}x (a smoke run: the processes share this "
                   f"machine's cores, so the ratio says nothing about GPUs)")
    table = markdown_table(["processes", "global batch", "micro-batch x accumulation", "step ms (median)", "tokens/s",
                            "peak GiB per process", "speed-up"], rows)
    print("\n" + table + "\n\n" + verdict)
    command = f"`python3 bench/ddp_speedup.py {' '.join(sys.argv[1:] if argv is None else argv)}`"
    write_outputs(f"{command}\n\n{header}\n\n{table}\n\n{verdict}\n",
                  {"header": header, "parallel": args.parallel, "runs": runs, "speedup": speedup, "goal": GOAL}, args.out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

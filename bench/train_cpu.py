"""Training steps per second on the CPU: the real trainer, one torch thread vs torch's default.

    python3 bench/train_cpu.py                       # the tiny preset, 30 steps per thread count
    python3 bench/train_cpu.py --presets tiny,small --steps 20 --threads 1,2

Each measurement is `pianomuse-tui --headless train --preset P --max-steps N` in its own process
on the bundled corpus (validation, auditions and checkpoints off), with OMP_NUM_THREADS set to the
thread count (the trainer keeps a user's OMP_NUM_THREADS; without one it picks 1 thread for
models up to 256 wide, engine.train.launch.cpu_train_threads). Steps/s comes from the run's
metrics.jsonl: the steps after the first --skip, over their elapsed time (model building and
the first steps' warm-up excluded). CPU seconds per step are the child's user+system time over
all steps (so they include the start-up). The load average is printed beside each row: on a
shared machine the wall-clock figures depend on it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.rundir import read_metrics  # noqa: E402


def run_once(preset: str, steps: int, threads: int, skip: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="pianomuse-bench-") as root:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
        command = [sys.executable, "-m", "pianomuse_tui.cli", "--headless", "train", "--preset", preset,
                   "--max-steps", str(steps), "--run-dir", root, "--device", "cpu", "--run.log_every", "1",
                   "--eval.val_every", "0", "--eval.audition_every", "0", "--run.checkpoint_every", "0"]
        load = os.getloadavg()[0]
        began = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - began
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{preset} with {threads} threads failed: {proc.stderr.read()[-2000:]}")
        (metrics,) = Path(root).glob("*/metrics.jsonl")
        train = [r for r in read_metrics(metrics) if r.kind == "train"]
        env_json = json.loads(next(Path(root).glob("*/env.json")).read_text())
    timed = [r for r in train if r.step > skip]
    first, last = timed[0], timed[-1]
    rate = (last.step - first.step) / max(1e-9, last.elapsed_s - first.elapsed_s)
    tokens = (last.tokens - first.tokens) / max(1, last.step - first.step)
    return {"preset": preset, "threads": threads, "torch_threads": env_json.get("cpu_threads"),
            "steps_per_s": rate, "tokens_per_step": tokens, "cpu_s_per_step": (usage.ru_utime + usage.ru_stime) / steps,
            "wall_s": wall, "load_before": load, "load_after": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip", type=int, default=3, help="first steps left out of steps/s (warm-up)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds, thread counts interleaved within each")
    args = parser.parse_args(argv)
    rows = []
    for _ in range(args.repeat):
        for preset in args.presets.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                rows.append(run_once(preset, args.steps, threads, args.skip))
                r = rows[-1]
                print(f"{preset} threads={threads}: {r['steps_per_s']:.2f} steps/s", file=sys.stderr, flush=True)
    print(f"{os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| preset | torch threads | steps/s | tokens/step | CPU s/step | load avg before/after |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['torch_threads']} | {r['steps_per_s']:.2f} | {r['tokens_per_step']:.0f} | "
              f"{r['cpu_s_per_step']:.2f} | {r['load_before']:.1f} / {r['load_after']:.1f} |")


if __name__ == "__main__":
    main()

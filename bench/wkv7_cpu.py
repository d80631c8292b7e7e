"""WKV7 on CPU: the chunked backend against the reference loop, forward and forward+backward.

Run:  .venv/bin/python bench/wkv7_cpu.py            (default shapes, fp32, prints a markdown table)
      .venv/bin/python bench/wkv7_cpu.py --shapes 1x1024x4 --chunk-sizes 16,32,64

Inputs come from engine.kernels.wkv7.sample_inputs (shaped like the model's: decays spread over
(0.545, 1), a = -kappa_hat, b = kappa_hat * iclr), with an initial state and the final state kept,
as in chunked prefill and long-sequence training. Times are the median over repeats, in
milliseconds; the reference gets fewer repeats because it is slow. On a shared machine use
--threads 1 --cpu-time (2 busy threads make wall-clock times erratic).
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import time

import torch

from engine.kernels.wkv7.chunked import CHUNK_SIZE, wkv7_chunked
from engine.kernels.wkv7.reference import wkv7_reference
from engine.kernels.wkv7.sample_inputs import random_state, realistic_inputs

DEFAULT_SHAPES = "8x256x2,1x1024x4,4x1024x4,4x512x8,1x2048x8"  # tiny and small presets, long prefill

CLOCK = time.perf_counter


def median_ms(fn, repeats, warmup=True):
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return statistics.median(times) * 1000


def forward_backward(fn, inputs, state0):
    leaves = {name: x.clone().requires_grad_() for name, x in inputs.items()}
    s0 = state0.clone().requires_grad_()

    def run():
        y, final = fn(**leaves, initial_state=s0, output_final_state=True)
        (y.square().sum() + final.square().sum()).backward()

    return run


def forward_only(fn, inputs, state0):
    def run():
        with torch.no_grad():
            fn(**inputs, initial_state=state0, output_final_state=True)

    return run


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def ratio(reference: float, chunked: float) -> str:
    return "-" if math.isnan(reference) else f"{reference / chunked:.1f}x"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma list of BxTxH (N is --head-size)")
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--chunk-sizes", default=str(CHUNK_SIZE), help="comma list of chunked backend chunk sizes")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs of the chunked backend")
    ap.add_argument("--reference-repeats", type=int, default=2, help="timed runs of the reference loop")
    ap.add_argument("--no-reference", action="store_true", help="time the chunked backend only")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with the process CPU clock instead of the wall clock: with --threads 1 it stays "
        "meaningful on a machine other jobs are loading",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time

    chunk_sizes = [int(c) for c in args.chunk_sizes.split(",")]
    N = args.head_size
    clock = "process CPU time" if args.cpu_time else "wall clock"
    print(
        f"WKV7 CPU, fp32, N={N}; {cpu_name()}, {torch.get_num_threads()} threads, {clock}; "
        f"torch {torch.__version__}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print()
    small = realistic_inputs(1, 64, 2, N)
    forward_backward(wkv7_reference, small, random_state(1, 2, N))()
    print("| B, T, H | chunk | ref fwd ms | chunked fwd ms | fwd speed-up | ref fwd+bwd ms | chunked fwd+bwd ms | fwd+bwd speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        B, T, H = (int(x) for x in shape.lower().split("x"))
        inputs = realistic_inputs(B, T, H, N)
        state0 = random_state(B, H, N)
        if args.no_reference:
            ref_f = ref_fb = float("nan")
        else:
            # No full-size warm-up for the slow loop: the small run in main() started the thread pool.
            ref_f = median_ms(forward_only(wkv7_reference, inputs, state0), args.reference_repeats, warmup=False)
            ref_fb = median_ms(
                forward_backward(wkv7_reference, inputs, state0), args.reference_repeats, warmup=False
            )
        for L in chunk_sizes:

            def chunked(**kw):
                return wkv7_chunked(**kw, chunk_size=L)

            ch_f = median_ms(forward_only(chunked, inputs, state0), args.repeats)
            ch_fb = median_ms(forward_backward(chunked, inputs, state0), args.repeats)
            print(
                f"| {B}, {T}, {H} | {L} | {ms(ref_f)} | {ms(ch_f)} | {ratio(ref_f, ch_f)} "
                f"| {ms(ref_fb)} | {ms(ch_fb)} | {ratio(ref_fb, ch_fb)} |",
                flush=True,
            )
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

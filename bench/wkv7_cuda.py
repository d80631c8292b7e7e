"""WKV7 forward and forward+backward: our CUDA kernels vs fla-core's chunk_rwkv7, same run, same GPU.

    python bench/wkv7_cuda.py [--shapes 16x2048x12,...] [--variants] [--reps-ms 400]

Shapes are B x T x H with N = 64 (rwkv7-spec.md section 9). Times are medians of CUDA-event timed
runs (triton.testing.do_bench). Each shape also gets its floor: the larger of (bytes that must move
/ copy bandwidth) and (fp32 FLOPs / fp32 FMA rate) for the sequential formulation, and our time as a
multiple of it. --variants also times every (segments, variant) plan for our kernel.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.kernels.wkv7 import cuda as wk
from engine.kernels.wkv7.reference import DECAY_SCALE

SPEC_SHAPES = [(16, 2048, 12), (8, 4096, 32), (64, 512, 12), (1, 16384, 12)]
# rwkv7-spec.md section 9 (H200): best public fwd+bwd ms and fwd ms per shape
SPEC_BEST_FB = {(16, 2048, 12): 3.64, (8, 4096, 32): 7.49, (64, 512, 12): 2.97, (1, 16384, 12): 8.45}
SPEC_BEST_F = {(16, 2048, 12): 1.11, (8, 4096, 32): 2.40, (64, 512, 12): 0.72, (1, 16384, 12): 2.9}
COPY_BW = 4.3e12  # bytes/s, device-to-device copy measured on this kind of machine (KINDS.md)
FP32_RATE = 67e12  # FLOP/s, fp32 FMA datasheet rate


def make_inputs(B, T, H, N=64, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    rn = lambda: torch.randn(B, T, H, N, device="cuda", generator=g)  # noqa: E731
    r, w, k, v = rn() * 0.5, rn() * 1.5 - 0.5, rn() * 0.5, rn()
    kappa = torch.nn.functional.normalize(rn(), dim=-1)
    a, b = -kappa, kappa * torch.sigmoid(rn())
    return [x.to(torch.bfloat16).contiguous() for x in (r, w, k, v, a, b)]


def floors(B, T, H, N=64):
    """(fwd floor ms, fwd+bwd floor ms): bytes (inputs read, outputs written once) and FLOPs."""
    tc = B * T * H * N
    fwd_bytes = tc * 2 * 7  # r w k v a b read, y written (bf16)
    fb_bytes = fwd_bytes + tc * 2 * 13  # backward: 6 inputs + dy read, 6 gradients written
    fwd_flops = B * T * H * N * N * 8  # sa, update (2 FMA), y: 4 FMA per state element
    fb_flops = fwd_flops * 4  # backward ~3x the forward's element work
    f = max(fwd_bytes / COPY_BW, fwd_flops / FP32_RATE) * 1e3
    fb = max(fb_bytes / COPY_BW, fb_flops / FP32_RATE) * 1e3
    return f, fb


def time_ms(fn, reps_ms):
    from triton.testing import do_bench

    return do_bench(fn, warmup=100, rep=reps_ms, return_mode="median")


def bench_ours(inputs, reps_ms):
    xs = [x.detach().requires_grad_(True) for x in inputs]
    gy = torch.randn_like(inputs[0])

    def fwd():
        with torch.no_grad():
            wk.wkv7_cuda(*inputs)

    def fb():
        y, _ = wk.wkv7_cuda(*xs)
        y.backward(gy)

    return time_ms(fwd, reps_ms), time_ms(fb, reps_ms)


def bench_fla(inputs, reps_ms):
    from fla.ops.rwkv7 import chunk_rwkv7

    r, w, k, v, a, b = inputs
    logd = (-DECAY_SCALE * torch.sigmoid(w.float())).to(torch.bfloat16)  # fla's w is log decay
    xs = [x.detach().requires_grad_(True) for x in (r, logd, k, v, a, b)]
    gy = torch.randn_like(r)

    def fwd():
        with torch.no_grad():
            chunk_rwkv7(r, logd, k, v, a, b, scale=1.0)

    def fb():
        y, _ = chunk_rwkv7(*xs, scale=1.0)
        y.backward(gy)

    return time_ms(fwd, reps_ms), time_ms(fb, reps_ms)


def bench_step(reps_ms):
    """Median time of the batched recurrent step kernel for one layer of L12-D768 (H = 12)."""
    rows = []
    for batch in (1, 8):
        xs = [x[:, 0].contiguous() for x in make_inputs(batch, 1, 12)]
        state = torch.randn(batch, 12, 64, 64, device="cuda") * 0.1
        with torch.no_grad():
            ms = time_ms(lambda: wk.wkv7_cuda_step(*xs, state), reps_ms / 2)
        rows.append((batch, ms * 1e3))
    return rows


def agreement(inputs):
    """Relative difference of y between ours and fla on the same inputs (same function check)."""
    from fla.ops.rwkv7 import chunk_rwkv7

    r, w, k, v, a, b = inputs
    logd = -DECAY_SCALE * torch.sigmoid(w.float())
    with torch.no_grad():
        y1, _ = wk.wkv7_cuda(*inputs)
        y2, _ = chunk_rwkv7(r, logd.to(r.dtype), k, v, a, b, scale=1.0)
    return ((y1.float() - y2.float()).norm() / y2.float().norm()).item()


def parse_shapes(text):
    return [tuple(int(x) for x in s.split("x")) for s in text.split(",")] if text else SPEC_SHAPES


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="")
    ap.add_argument("--reps-ms", type=float, default=400)
    ap.add_argument("--variants", action="store_true", help="also time each (segments, variant) plan")
    ap.add_argument("--nsegs", default="1,8,16,32,64", help="segment counts tried by --variants (few-block shapes)")
    ap.add_argument("--no-fla", action="store_true")
    args = ap.parse_args()
    args.nsegs = [int(x) for x in args.nsegs.split(",")]
    assert wk.is_available(), "CUDA kernels did not build"
    try:
        import fla  # noqa: F401

        have_fla = not args.no_fla
    except ImportError:
        have_fla = False
        print("fla-core not importable: its columns are empty")
    dev = torch.cuda.get_device_name()
    print(f"device: {dev}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    rows = []
    for B, T, H in parse_shapes(args.shapes):
        inputs = make_inputs(B, T, H)
        nseg, variant = wk.plan(B, H, T, False, inputs[0].device)
        if args.variants:
            for vv in wk.VARIANTS:
                many_blocks = B * H >= torch.cuda.get_device_properties(0).multi_processor_count
                for vn in ([1, 2] if many_blocks else args.nsegs):
                    if vn > 1 and T // vn < 64:
                        continue
                    os.environ["PIANOMUSE_WKV7_VARIANT"], os.environ["PIANOMUSE_WKV7_NSEG"] = str(vv), str(vn)
                    f, fb = bench_ours(inputs, args.reps_ms / 2)
                    print(f"  variant {B}x{T}x{H} variant={vv} nseg={vn}: fwd {f:.3f} ms, fwd+bwd {fb:.3f} ms",
                          flush=True)
            del os.environ["PIANOMUSE_WKV7_VARIANT"], os.environ["PIANOMUSE_WKV7_NSEG"]
        f, fb = bench_ours(inputs, args.reps_ms)
        ff = ffb = agree = float("nan")
        if have_fla:
            ff, ffb = bench_fla(inputs, args.reps_ms)
            agree = agreement(inputs)
        fl_f, fl_fb = floors(B, T, H)
        rows.append((B, T, H, nseg, variant, f, fb, ff, ffb, fl_f, fl_fb, agree))
        print(f"  {B}x{T}x{H}: ours {f:.3f}/{fb:.3f} ms, fla {ff:.3f}/{ffb:.3f} ms", flush=True)
        del inputs
        torch.cuda.empty_cache()
    step_rows = bench_step(args.reps_ms)
    print()
    print("| B, T, H | plan (nseg, variant) | ours fwd | fla fwd | ours fwd+bwd | fla fwd+bwd | best public fwd+bwd (spec) "
          "| goal (0.8x) | floor fwd / fwd+bwd | ours / floor (fwd+bwd) | y vs fla |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for B, T, H, nseg, variant, f, fb, ff, ffb, fl_f, fl_fb, agree in rows:
        best = min(SPEC_BEST_FB[(B, T, H)], ffb) if (B, T, H) in SPEC_BEST_FB else ffb
        goal = 0.8 * best if not math.isnan(best) else float("nan")
        print(f"| {B}, {T}, {H} | {nseg}, {variant} | {f:.2f} | {ff:.2f} | {fb:.2f} | {ffb:.2f} | "
              f"{SPEC_BEST_FB.get((B, T, H), float('nan')):.2f} | {goal:.2f} | {fl_f:.3f} / {fl_fb:.3f} | "
              f"{fb / fl_fb:.1f}x | {agree:.1e} |")
    print()
    print("| generation step (one layer's WKV, H=12, N=64) | median us |")
    print("|---|---|")
    for batch, us in step_rows:
        print(f"| batch {batch} | {us:.1f} |")


if __name__ == "__main__":
    main()

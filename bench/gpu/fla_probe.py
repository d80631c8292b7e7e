"""Why fla-core's chunk_rwkv7 gave NaN timings: time its first call (Triton autotuning), check its
output against our kernel, and time it with plain CUDA events. Runs on the GPU machine."""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.wkv7_cuda import make_inputs
from engine.kernels.wkv7 import cuda as wk
from engine.kernels.wkv7.reference import DECAY_SCALE

import fla
from fla.ops.rwkv7 import chunk_rwkv7

print("fla", getattr(fla, "__version__", "?"))
for B, T, H in [(16, 2048, 12), (1, 16384, 12)]:
    r, w, k, v, a, b = make_inputs(B, T, H)
    logd = (-DECAY_SCALE * torch.sigmoid(w.float())).to(torch.bfloat16)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        y2, _ = chunk_rwkv7(r, logd, k, v, a, b, scale=1.0)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    with torch.no_grad():
        y1, _ = wk.wkv7_cuda(r, w, k, v, a, b)
    nan = torch.isnan(y2).sum().item()
    rel = ((y1.float() - y2.float()).norm() / y1.float().norm()).item()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    ev[0].record()
    for _ in range(10):
        with torch.no_grad():
            chunk_rwkv7(r, logd, k, v, a, b, scale=1.0)
    ev[1].record()
    torch.cuda.synchronize()
    print(f"{B}x{T}x{H}: first call {first:.1f} s, NaN in y {nan}, rel diff vs ours {rel:.3e}, "
          f"fwd {ev[0].elapsed_time(ev[1]) / 10:.3f} ms (events, 10 runs)", flush=True)
    try:
        from triton.testing import do_bench
        print("  do_bench median:", do_bench(lambda: chunk_rwkv7(r, logd, k, v, a, b, scale=1.0), warmup=50, rep=200, return_mode="median"))
    except Exception as exc:  # noqa: BLE001
        print("  do_bench failed:", repr(exc))

"""Per-token latency of the RNN step on a CUDA GPU (issue 5: p99 < 1 ms per token at batch 1).

    python3 bench/decode_gpu.py [--sizes 12x768] [--batches 1,8] [--steps 500] [--out FILE]

A random-weight model (V = 512, as in rwkv7-spec.md section 9's table) runs ``RWKV7.step`` under
``torch.inference_mode`` one token at a time, and every step ends with the logits on the host
(``.cpu()``), as a live player needs them for sampling. Modes, same weights, same tokens:
- graphed: the engine's default on CUDA, the step replayed from a captured CUDA graph;
- traced: the frozen TorchScript trace (``model.rnn_cuda_graph = False``);
- eager: plain PyTorch (``model.rnn_trace = False``).
Reported per mode and batch: median and p99 milliseconds per step (all rows of the batch at
once). The public rwkv package's numbers on an H200 are in rwkv7-spec.md section 9 (L12-D768,
"cuda fp16", its CUDA kernel on: 12.6 ms median, 15.1 ms p99 per token at batch 1).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench._train_bench import BenchError, markdown_table, run_header, write_outputs  # noqa: E402
from engine.model import RWKV7, ModelConfig  # noqa: E402

MODES = ("graphed", "traced", "eager")


def measure(model: RWKV7, mode: str, batch: int, steps: int, warmup: int) -> dict:
    model.rnn_trace = mode != "eager"
    model.rnn_cuda_graph = mode == "graphed"
    device = next(model.parameters()).device
    g = torch.Generator(device="cpu").manual_seed(batch)
    tokens = torch.randint(3, model.config.vocab_size, (warmup + steps, batch), generator=g).to(device)
    times = []
    with torch.inference_mode():
        state = model.init_state(batch)
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            logits, state = model.step(tokens[i], state)
            logits.cpu()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"mode": mode, "batch": batch, "median_ms": statistics.median(times),
            "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))], "steps": steps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="12x768", help="LAYERSxWIDTH list")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise BenchError("this benchmark needs a CUDA GPU; bench/decode.py measures the CPU step")
    device = torch.device("cuda")
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    header = run_header(device, f"RWKV7.step, random weights, V=512, weights {args.dtype}, fp32 state; "
                                f"median of {args.steps} steps after {args.warmup}, logits copied to the host each step")
    rows, results = [], []
    for size in args.sizes.split(","):
        L, D = (int(x) for x in size.lower().split("x"))
        torch.manual_seed(0)
        model = RWKV7(ModelConfig(n_layer=L, n_embd=D, vocab_size=512, head_size=64)).to(device=device, dtype=dtype).eval()
        for batch in (int(b) for b in args.batches.split(",")):
            for mode in MODES:
                r = measure(model, mode, batch, args.steps, args.warmup)
                r["size"] = f"L{L}-D{D}"
                results.append(r)
                rows.append([r["size"], str(batch), mode, f"{r['median_ms']:.3f}", f"{r['p99_ms']:.3f}",
                             f"{batch / r['median_ms'] * 1e3:.0f}"])
                print("| " + " | ".join(rows[-1]) + " |", flush=True)
    cmd = " ".join(sys.argv[1:] if argv is None else argv)
    markdown = f"`python3 bench/decode_gpu.py {cmd}`\n\n{header}\n\n" + markdown_table(
        ["model", "batch", "mode", "median ms/step", "p99 ms/step", "tokens/s"], rows)
    print(markdown)
    write_outputs(markdown, {"header": header, "results": results}, args.out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-token latency of the RNN step on a CUDA GPU (issue 5: p99 < 1 ms per token at batch 1).

    python3 bench/decode_gpu.py [--sizes 12x768,6x256] [--batches 1,8,32] [--modes graphed,traced]
                                [--compiled] [--peer-cuda] [--steps 500] [--out FILE] [--json FILE]

A random-weight model (V = 512, as in rwkv7-spec.md section 9's table) runs ``RWKV7.step`` under
``torch.inference_mode`` one token at a time, and every step ends with a draw (temperature + top-p,
the engine's sampler), as a live player does. Modes, same weights, same tokens:
- graphed: the engine's default on CUDA, the step replayed from a captured CUDA graph;
- traced: the frozen TorchScript trace (``model.rnn_cuda_graph = False``);
- eager: plain PyTorch (``model.rnn_trace = False``);
- rwkv package (the peer, when ``rwkv`` is importable): ``RWKV.forward([token], state)`` on the
  same weights (saved as an official checkpoint), strategy ``--peer-strategy`` (default
  "cuda fp16"); it has no batch, so batch B is B calls per step. ``--peer-cuda`` turns its own
  CUDA kernel on (RWKV_CUDA_ON=1, JIT-built at import into a fresh build folder, so a stale or
  locked build of an earlier run is never picked up). Batch B costs B calls a step, so the peer
  runs ``--peer-steps`` / B steps (at least 20) after 5 warm-up steps.
Each row says what ran: the Triton or PyTorch step (``--no-triton``), the weight cache's dtype
(``--rnn-dtype``; the default "auto" is the engine's: bf16 over fp32 weights on CUDA with the Triton
step) and where the draw ran (``--sampler device``, the default: on the GPU, only the ids to the
host; ``host``: the logits copied there). ``--engine DIR --label old`` times another checkout's engine (e.g. the tree before a change)
with this script. Reported per mode and batch: median and p99 milliseconds per step (all rows of the batch at
once). rwkv7-spec.md section 9 lists the package on an H200 (L12-D768, "cuda fp16", its CUDA
kernel on: 12.6 ms median, 15.1 ms p99 per token at batch 1).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if "--engine" in sys.argv[:-1]:  # another checkout's engine package first on the path (read before importing it)
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--engine") + 1]).resolve()))

import torch

from bench._train_bench import BenchError, markdown_table, run_header, write_outputs
from engine.model import RWKV7, ModelConfig, save_checkpoint
from engine.model.pianomuse import sample_logits

try:  # the engine's sampler (an --engine checkout from before it existed: the host sampler only)
    from engine.generate.sampling import SamplingConfig, sample_rows
except ImportError:  # pragma: no cover
    SamplingConfig = sample_rows = None

MODES = ("graphed", "traced", "eager")
OPT_IN_MODES = ("compiled",)  # --compiled: the graphed step over a torch.compile'd step (model.rnn_compile)
PEER = "rwkv package"
RNN_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # --rnn-dtype


def measure(model: RWKV7, mode: str, batch: int, steps: int, warmup: int, sampler: str = "device") -> dict:
    model.rnn_trace = mode != "eager"
    model.rnn_cuda_graph = mode in ("graphed", "compiled")
    model.rnn_compile = mode == "compiled"
    device = next(model.parameters()).device
    g = torch.Generator(device="cpu").manual_seed(batch)
    tokens = torch.randint(3, model.config.vocab_size, (warmup + steps, batch), generator=g).to(device)
    gens = [torch.Generator(device="cpu").manual_seed(batch * 1000 + r) for r in range(batch)]
    allowed = torch.ones(batch, model.config.vocab_size, dtype=torch.bool, device=device)
    config = SamplingConfig(temperature=1.0, top_p=0.95)
    times = []
    with torch.inference_mode():
        state = model.init_state(batch)
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            logits, state = model.step(tokens[i], state)
            if sampler == "host":
                scores = logits.float().cpu()
                for row in scores:  # the logits to the host, each row sampled there (temperature + nucleus)
                    sample_logits(row, 1.0, 0.95, generator=g)
            else:  # the engine's sampler on the logits' device: only the ids come back
                sample_rows(logits, allowed, config, gens, [[]] * batch)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    if mode in ("graphed", "compiled") and not any(
        k[0] == "graph" and k[1] == batch and k[-1] == (mode == "compiled") for k in model._rnn_traces
    ):  # a capture that fails falls back to the traced step: never report that under this mode's name
        raise RuntimeError(f"the {mode} step did not capture a CUDA graph at batch {batch} (see the warning above)")
    with torch.no_grad():
        weight_dtype = str(model._rnn_weights()[0].dtype).replace("torch.", "")
    times.sort()
    graphs = [k for k in model._rnn_traces if k[0] == "graph" and k[1] == batch]
    return {"mode": mode, "batch": batch, "median_ms": statistics.median(times),
            "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))], "steps": steps, "sampler": sampler,
            # what the step really ran (a lever that could not engage must not be reported as on)
            "triton": bool(graphs and len(graphs[-1]) == 7 and graphs[-1][5]) if mode != "eager" else None,
            "weight_dtype": weight_dtype}


def load_peer(model: RWKV7, strategy: str, cuda_kernel: bool, folder: str, build_dir: str | None = None):
    """The public rwkv package on ``model``'s weights, or None when it is not installed."""
    # the package reads its switches at import (and builds its CUDA kernel then, through
    # torch.utils.cpp_extension into TORCH_EXTENSIONS_DIR: a fresh folder here); RWKV_CUDA_ON also
    # steers our operator, so every switch is put back right after
    keys = ("RWKV_V7_ON", "RWKV_JIT_ON", "RWKV_CUDA_ON", "TORCH_EXTENSIONS_DIR")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(RWKV_V7_ON="1", RWKV_JIT_ON="1", RWKV_CUDA_ON="1" if cuda_kernel else "0",
                      TORCH_EXTENSIONS_DIR=build_dir or str(Path(folder) / "torch_extensions"))
    try:
        from rwkv.model import RWKV
    except ImportError:
        return None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    path = save_checkpoint(model.float().cpu(), Path(folder) / "peer")
    return RWKV(str(path.with_suffix("")), strategy)  # it appends .pth


def measure_peer(peer, vocab: int, batch: int, steps: int, warmup: int) -> dict:
    g = torch.Generator(device="cpu").manual_seed(batch)
    tokens = torch.randint(3, vocab, (warmup + steps, batch), generator=g).tolist()
    states = [None] * batch
    times = []
    with torch.inference_mode():
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            for b in range(batch):
                out, states[b] = peer.forward([tokens[i][b]], states[b])
                sample_logits(out.float().cpu(), 1.0, 0.95, generator=g)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"mode": PEER, "batch": batch, "median_ms": statistics.median(times),
            "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))], "steps": steps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="12x768", help="LAYERSxWIDTH list")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--peer-strategy", default="cuda fp16", help="the rwkv package's strategy string")
    ap.add_argument("--peer-cuda", action="store_true", help="the rwkv package with its CUDA kernel (built at load)")
    ap.add_argument("--peer-build-dir", default=None, help="where the package builds its CUDA kernel (default: a fresh folder)")
    ap.add_argument("--peer-steps", type=int, default=200, help="the peer's timed steps at batch 1 (this / B at batch B, at least 20)")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--modes", default=",".join(MODES), help=f"our step's modes, of {', '.join(MODES + OPT_IN_MODES)}")
    ap.add_argument("--compiled", action="store_true", help="also the graphed step over a torch.compile'd step (model.rnn_compile)")
    ap.add_argument("--compiled-batches", default=None, help="the batches for --compiled (default: all; each batch size compiles anew)")
    ap.add_argument("--engine", default=None, help="import the engine package from this checkout instead "
                    "(e.g. the tree before a change, for a before/after from one device call)")
    ap.add_argument("--sampler", default="device", choices=("device", "host"),
                    help="device: the engine's sampler on the GPU (only ids come back; the default); host: the logits copied to the host and sampled there")
    ap.add_argument("--no-triton", action="store_true", help="the step's element-wise work in PyTorch, not the Triton kernels (model.rnn_triton = False)")
    ap.add_argument("--rnn-dtype", default="auto", choices=tuple(RNN_DTYPES) + ("auto",),
                    help="RNN mode's weight cache dtype (model.rnn_weight_dtype); auto: the engine's default "
                         "(bf16 over fp32 weights on CUDA with the Triton step, else the weights' dtype)")
    ap.add_argument("--label", default="", help="a tag for every row (e.g. the tree measured), kept in the JSON")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a smoke run of this script")
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    modes = tuple(m for m in args.modes.split(",") if m)
    unknown = set(modes) - set(MODES + OPT_IN_MODES)
    if unknown:
        raise BenchError(f"unknown mode(s) {', '.join(sorted(unknown))}; use {', '.join(MODES + OPT_IN_MODES)}")
    if args.compiled and "compiled" not in modes:
        modes += ("compiled",)
    compiled_batches = {int(b) for b in args.compiled_batches.split(",")} if args.compiled_batches else None
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("this benchmark needs a CUDA GPU; bench/decode.py measures the CPU step (--device cpu is a smoke run)")
    device = torch.device(args.device)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    header = run_header(device, f"RWKV7.step, random weights, V=512, weights {args.dtype}, fp32 state; "
                                f"median of {args.steps} steps after {args.warmup}, each step sampled (temperature 1, top-p 0.95) "
                                + ("on the GPU, the ids to the host" if args.sampler == "device" else "on the host, the logits copied there")
                                + (f"; engine imported from {args.engine}" if args.engine else ""))
    rows, results = [], []
    for size in args.sizes.split(","):
        L, D = (int(x) for x in size.lower().split("x"))
        torch.manual_seed(0)
        model = RWKV7(ModelConfig(n_layer=L, n_embd=D, vocab_size=512, head_size=64))
        with torch.no_grad():  # off the zero inits so every term does real work
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        model = model.to(device=device, dtype=dtype).eval()
        model.rnn_triton = not args.no_triton
        if args.rnn_dtype != "auto":  # (left alone, an --engine checkout keeps its own default)
            model.rnn_weight_dtype = RNN_DTYPES[args.rnn_dtype]
        peer = None
        if not args.no_peer:
            import tempfile

            strategy = args.peer_strategy if device.type == "cuda" else "cpu fp32"
            peer = load_peer(model, strategy, args.peer_cuda, tempfile.mkdtemp(prefix="pianomuse-peer-"), args.peer_build_dir)
            model = model.to(device=device, dtype=dtype)
        for batch in (int(b) for b in args.batches.split(",")):
            ours = modes if device.type == "cuda" else tuple(m for m in modes if m in ("traced", "eager"))
            if compiled_batches is not None and batch not in compiled_batches:
                ours = tuple(m for m in ours if m != "compiled")
            for mode in ours + ((PEER,) if peer is not None else ()):
                if mode == PEER:
                    r = measure_peer(peer, 512, batch, max(20, args.peer_steps // batch), min(args.warmup, 5))
                else:
                    r = measure(model, mode, batch, args.steps, args.warmup, args.sampler)
                r["size"] = f"L{L}-D{D}"
                r["label"] = args.label
                results.append(r)
                how = "" if mode == PEER else (f" [{'triton' if r['triton'] else 'pytorch'} step, weights {r['weight_dtype']}, "
                                                f"{r['sampler']} sampler]")
                rows.append([r["size"], str(batch), mode + how + (f" ({args.label})" if args.label else ""),
                             f"{r['median_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{batch / r['median_ms'] * 1e3:.0f}"])
                print("| " + " | ".join(rows[-1]) + " |", flush=True)
    cmd = " ".join(sys.argv[1:] if argv is None else argv)
    markdown = f"`python3 bench/decode_gpu.py {cmd}`\n\n{header}\n\n" + markdown_table(
        ["model", "batch", "mode", "median ms/step", "p99 ms/step", "tokens/s"], rows)
    print(markdown)
    write_outputs(markdown, {"header": header, "results": results}, args.out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

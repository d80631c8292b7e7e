"""Tokens/s of a small RWKV-7 on CPU, parallel (GPT) and recurrent (RNN) mode, next to the public
`rwkv` package (0.8.x, "cpu fp32") on the same weights.

    .venv/bin/python bench/forward_cpu.py [--layers 4 --width 256 --vocab 512 --threads 2 --prefill 512]

Rows:
- RNN step: one token per call, batch 1 (ms per token, median and p99). Ours: ``RWKV7.step``
  under ``torch.inference_mode`` as the engine runs it: the fused C++ CPU step
  (``engine.model.cpu_ext``). The "traced" row is the PyTorch step (``model.rnn_fused = False``:
  a frozen TorchScript trace), the "eager" row the same math without the trace either. Theirs:
  ``RWKV.forward([token], state)`` (its per-token path, itself TorchScript).
- Prefill: a prompt of ``--prefill`` tokens in one call. Ours: ``RWKV7.forward`` (parallel mode, the
  chunked WKV7 kernel). Theirs: ``RWKV.forward(tokens, None)`` (its sequence path, which on CPU
  runs the WKV recurrence as a Python loop over time).
- Batched RNN step: ``--batch`` sequences per ``step`` call (the package steps one sequence a call).
Ours and theirs alternate in rounds, so machine noise hits both alike; each figure is the median
over rounds. Goals (issue 2): RNN step >= 2x the package's, prefill >= 10x its sequence path.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RWKV_V7_ON", "1")  # the rwkv package reads these at import time
os.environ.setdefault("RWKV_CUDA_ON", "0")
os.environ.setdefault("RWKV_JIT_ON", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.kernels.wkv7 import resolve_backend
from engine.model import RWKV7, ModelConfig, save_checkpoint


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def make_model(args) -> RWKV7:
    torch.manual_seed(0)
    config = ModelConfig(arch="x070", n_layer=args.layers, n_embd=args.width, vocab_size=args.vocab, head_size=64)
    model = RWKV7(config)
    with torch.no_grad():  # move off the zero inits so every term does real work
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


clock = time.perf_counter


def time_steps(step, n: int) -> list[float]:
    times = []
    for i in range(n):
        t0 = clock()
        step(i)
        times.append(clock() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--steps", type=int, default=200, help="RNN steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8, help="sequences in the batched RNN row")
    ap.add_argument("--no-peer", action="store_true", help="skip the rwkv package")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this thread's CPU time, robust on a shared machine (needs --threads 1)")
    args = ap.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        ap.error("--clock cpu measures one thread; use it with --threads 1")
    global clock
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)

    model = make_model(args)
    V = args.vocab
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, V, (args.prefill,), generator=gen)
    tokens = torch.randint(0, V, (args.steps,), generator=gen).tolist()

    peer = None
    if not args.no_peer:
        tmp = tempfile.TemporaryDirectory()
        path = save_checkpoint(model, Path(tmp.name) / "bench")
        from rwkv.model import RWKV

        peer = RWKV(str(path.with_suffix("")), "cpu fp32")  # it appends .pth

    def ours_rnn():
        state = model.init_state(1)
        with torch.inference_mode():
            def one(i):
                nonlocal state
                _, state = model.step(torch.tensor([tokens[i]]), state)
            return time_steps(one, len(tokens))

    def ours_rnn_batched():
        state = model.init_state(args.batch)
        with torch.inference_mode():
            def one(i):
                nonlocal state
                _, state = model.step(torch.full((args.batch,), tokens[i]), state)
            return time_steps(one, len(tokens) // 4)

    def peer_rnn():
        state = None
        def one(i):
            nonlocal state
            _, state = peer.forward([tokens[i]], state)
        return time_steps(one, len(tokens))

    def ours_prefill():
        with torch.inference_mode():
            t0 = clock()
            model(prompt.view(1, -1), return_state=True)
            return clock() - t0

    def peer_prefill():
        t0 = clock()
        peer.forward(prompt.tolist(), None)
        return clock() - t0

    # warm-up (caches, JIT, allocator)
    ours_rnn(), ours_prefill(), ours_rnn_batched()
    if peer is not None:
        peer_rnn(), peer_prefill()

    rows = {k: [] for k in ("ours_step", "ours_p99", "traced_step", "traced_p99", "eager_step", "eager_p99", "ours_batched", "peer_step", "peer_p99", "ours_prefill", "peer_prefill")}
    for _ in range(args.rounds):
        t = ours_rnn()
        rows["ours_step"].append(statistics.median(t))
        rows["ours_p99"].append(sorted(t)[int(0.99 * (len(t) - 1))])
        model.rnn_fused = False
        t = ours_rnn()
        rows["traced_step"].append(statistics.median(t))
        rows["traced_p99"].append(sorted(t)[int(0.99 * (len(t) - 1))])
        model.rnn_trace = False
        t = ours_rnn()
        model.rnn_trace = model.rnn_fused = True
        rows["eager_step"].append(statistics.median(t))
        rows["eager_p99"].append(sorted(t)[int(0.99 * (len(t) - 1))])
        rows["ours_prefill"].append(ours_prefill())
        rows["ours_batched"].append(statistics.median(ours_rnn_batched()))
        if peer is not None:
            t = peer_rnn()
            rows["peer_step"].append(statistics.median(t))
            rows["peer_p99"].append(sorted(t)[int(0.99 * (len(t) - 1))])
            rows["peer_prefill"].append(peer_prefill())
    med = {k: statistics.median(v) if v else float("nan") for k, v in rows.items()}

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    fused = "on" if model._rnn_fused is not None else "OFF (see the warning above)"
    print(f"# forward_cpu: L{args.layers}-D{args.width}, V={V}, batch 1, fp32, {args.threads} threads, {args.clock} clock, fused CPU step {fused}")
    print(f"device: {cpu_name()} ({os.cpu_count()} cores visible); torch {torch.__version__}; "
          f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"our WKV backend: {resolve_backend(model.wkv_backend, 'cpu')}; {args.rounds} rounds; load average {load:.1f}")
    print()
    print("| mode | PianoMuse | rwkv 0.8 package | speed-up | goal |")
    print("|---|---|---|---|---|")
    sp_step = med["peer_step"] / med["ours_step"]
    print(f"| RNN step, ms/token median (p99) | {med['ours_step'] * 1e3:.3f} ({med['ours_p99'] * 1e3:.3f}) | "
          f"{med['peer_step'] * 1e3:.3f} ({med['peer_p99'] * 1e3:.3f}) | {sp_step:.2f}x | >= 2x |")
    print(f"| RNN step, tokens/s | {1 / med['ours_step']:,.0f} | {1 / med['peer_step']:,.0f} | {sp_step:.2f}x | |")
    print(f"| RNN step PyTorch traced (no fused step), ms/token median (p99) | {med['traced_step'] * 1e3:.3f} ({med['traced_p99'] * 1e3:.3f}) | "
          f"{med['peer_step'] * 1e3:.3f} ({med['peer_p99'] * 1e3:.3f}) | {med['peer_step'] / med['traced_step']:.2f}x | |")
    print(f"| RNN step PyTorch eager (no fused step, no trace), ms/token median (p99) | {med['eager_step'] * 1e3:.3f} ({med['eager_p99'] * 1e3:.3f}) | "
          f"{med['peer_step'] * 1e3:.3f} ({med['peer_p99'] * 1e3:.3f}) | {med['peer_step'] / med['eager_step']:.2f}x | |")
    batched = args.batch / med["ours_batched"]
    print(f"| RNN step, {args.batch} sequences at once, tokens/s (the package has no batch: {args.batch} calls) | "
          f"{batched:,.0f} | {1 / med['peer_step']:,.0f} | {batched * med['peer_step']:.1f}x | |")
    sp_pre = med["peer_prefill"] / med["ours_prefill"]
    print(f"| prefill {args.prefill} tokens (GPT mode vs its sequence path), tokens/s | "
          f"{args.prefill / med['ours_prefill']:,.0f} | {args.prefill / med['peer_prefill']:,.0f} | {sp_pre:.1f}x | >= 10x |")


if __name__ == "__main__":
    main()

"""Live decoding on CPU: tokens/s and p99 step latency in RNN mode, batch 1 and 4, next to the public
`rwkv` package (0.8.x, "cpu fp32") on the same weights.

    .venv/bin/python bench/decode.py [--sizes 6x256,12x512] [--steps 200] [--threads 1]

Rows per model size and batch:
- PianoMuse step: ``RWKV7.step`` on a batch of B rows (one call per token for all rows), as the
  engine runs it without autograd on CPU: the fused C++ step (``engine.model.cpu_ext``).
- PianoMuse traced: the PyTorch step (``model.rnn_fused = False``): a frozen TorchScript trace.
- PianoMuse eager: the PyTorch step without the trace either (plain eager mode).
- PianoMuse session: ``GenerationSession.step`` (the same step plus grammar mask and sampling
  for every row: what a live performance pays per token).
- rwkv package: ``RWKV.forward([token], state)``, its per-token path; it has no batch, so batch B
  is B calls per step.
Tokens/s counts all rows. The peer and ours alternate in rounds (median over rounds) so machine
noise hits both alike. Every step is timed on the wall clock and on this thread's CPU clock
(``time.thread_time``: on a shared, loaded machine it leaves out time spent descheduled; with
``--threads 1`` it is the step's own cost). Goals (issue 6): >= 2x the package, p99 step well
under 10 ms.
"""
from __future__ import annotations

import argparse
import datetime
import os
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from forward_cpu import cpu_name

from engine.data.tokenizer import PianoTokenizer
from engine.generate import GenerationSession, SamplingConfig
from engine.model import RWKV7, ModelConfig, save_checkpoint


def make_model(layers: int, width: int, vocab: int) -> RWKV7:
    torch.manual_seed(0)
    model = RWKV7(ModelConfig(arch="x070", n_layer=layers, n_embd=width, vocab_size=vocab, head_size=64))
    with torch.no_grad():  # off the zero inits so every term does real work
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def timed(fn, n: int) -> tuple[list[float], list[float]]:
    """(wall seconds, thread CPU seconds) of n calls."""
    wall, cpu = [], []
    for _ in range(n):
        t, c = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - c)
        wall.append(time.perf_counter() - t)
    return wall, cpu


def summary(times: tuple[list[float], list[float]], rows: int) -> tuple[float, float, float, float]:
    """(tokens/s over all rows, p99 ms per step) on the wall clock, then the same on the CPU clock."""
    out = ()
    for clock in times:
        ordered = sorted(clock)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        out += (rows / statistics.median(ordered), p99 * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="6x256,4x256", help="LAYERSxWIDTH list (6x256: the bundled model's size)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="1,4")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = PianoTokenizer("REMI")
    from rwkv.model import RWKV

    rows_out = []
    for size in args.sizes.split(","):
        layers, width = (int(x) for x in size.split("x"))
        model = make_model(layers, width, tok.vocab_size)
        with tempfile.TemporaryDirectory() as tmp:
            path = save_checkpoint(model, Path(tmp) / "bench.pth", tokenizer=tok.to_config())
            peer = RWKV(str(Path(path).with_suffix("")), "cpu fp32")
        for batch in (int(b) for b in args.batches.split(",")):
            results = {"step": [], "traced": [], "eager": [], "session": [], "peer": []}
            tokens = torch.randint(3, tok.vocab_size, (batch,))
            with torch.inference_mode():  # warm-up: the trace for this batch size, allocator, caches
                model.step(tokens, model.init_state(batch))
            warm_state = None
            for _ in range(5):  # and the package's TorchScript functions
                _, warm_state = peer.forward([int(tokens[0])], warm_state)
            for _ in range(args.rounds):
                for mode in ("step", "traced", "eager"):
                    model.rnn_fused = mode == "step"
                    model.rnn_trace = mode != "eager"
                    state = model.init_state(batch)
                    with torch.inference_mode():
                        def ours():
                            nonlocal state
                            _, state = model.step(tokens, state)
                        results[mode].append(summary(timed(ours, args.steps), batch))
                model.rnn_trace = model.rnn_fused = True
                session = GenerationSession(model, tok, SamplingConfig(seed=0), alternatives=batch, max_tokens=10**9)
                session.prefill()
                results["session"].append(summary(timed(session.step, args.steps), batch))
                peer_states = [None] * batch

                def theirs():
                    for b in range(batch):
                        _, peer_states[b] = peer.forward([int(tokens[b])], peer_states[b])
                results["peer"].append(summary(timed(theirs, args.steps), batch))
            med = {k: tuple(statistics.median(r[i] for r in v) for i in range(4)) for k, v in results.items()}
            rows_out.append((size, batch, med))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# decode (RNN mode), CPU: {cpu_name()} ({os.cpu_count()} cores visible), {args.threads} thread(s), "
          f"torch {torch.__version__}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"load average {load:.1f}, {args.rounds} rounds x {args.steps} steps")
    for title, i in (("CPU clock (this thread's CPU time)", 2), ("wall clock", 0)):
        print()
        print(f"{title}: tokens/s over all rows (p99 ms per step)")
        print()
        print("| model | batch | PianoMuse step (fused) | PianoMuse traced | PianoMuse eager | PianoMuse session | rwkv 0.8 "
              "| step speed-up | traced speed-up | eager speed-up | session speed-up |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for size, batch, med in rows_out:
            s, t, e, g, p = (med[k] for k in ("step", "traced", "eager", "session", "peer"))
            print(f"| L{size.replace('x', '-D')} | {batch} | {s[i]:.0f} ({s[i + 1]:.2f}) | {t[i]:.0f} ({t[i + 1]:.2f}) | "
                  f"{e[i]:.0f} ({e[i + 1]:.2f}) | {g[i]:.0f} ({g[i + 1]:.2f}) | {p[i]:.0f} ({p[i + 1]:.2f}) | "
                  f"{s[i] / p[i]:.2f}x | {t[i] / p[i]:.2f}x | {e[i] / p[i]:.2f}x | {g[i] / p[i]:.2f}x |")


if __name__ == "__main__":
    main()

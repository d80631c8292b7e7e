"""Live decoding on CPU: tokens/s and p99 step latency in RNN mode, batch 1 and 4, next to the public
`rwkv` package (0.8.x, "cpu fp32") on the same weights.

    .venv/bin/python bench/decode.py [--sizes 6x256,12x512] [--steps 200] [--threads 1]

Rows per model size and batch:
- PianoMuse step: ``RWKV7.step`` on a batch of B rows (one call per token for all rows).
- PianoMuse session: ``GenerationSession.step`` (the same step plus grammar mask and sampling
  for every row: what a live performance pays per token).
- rwkv package: ``RWKV.forward([token], state)``, its per-token path; it has no batch, so batch B
  is B calls per step.
Tokens/s counts all rows. The peer and ours alternate in rounds (median over rounds) so machine
noise hits both alike. Goals (issue 6): >= 2x the package, p99 step well under 10 ms.
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

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from forward_cpu import cpu_name  # noqa: E402

from engine.data.tokenizer import PianoTokenizer  # noqa: E402
from engine.generate import GenerationSession, SamplingConfig  # noqa: E402
from engine.model import RWKV7, ModelConfig, save_checkpoint  # noqa: E402


def make_model(layers: int, width: int, vocab: int) -> RWKV7:
    torch.manual_seed(0)
    model = RWKV7(ModelConfig(arch="x070", n_layer=layers, n_embd=width, vocab_size=vocab, head_size=64))
    with torch.no_grad():  # off the zero inits so every term does real work
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def summary(times: list[float], rows: int) -> tuple[float, float]:
    """(tokens/s over all rows, p99 ms per step)."""
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return rows / statistics.median(ordered), p99 * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="6x256,12x512", help="LAYERSxWIDTH list")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="1,4")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = PianoTokenizer("REMI")
    from rwkv.model import RWKV  # noqa: PLC0415

    rows_out = []
    for size in args.sizes.split(","):
        layers, width = (int(x) for x in size.split("x"))
        model = make_model(layers, width, tok.vocab_size)
        with tempfile.TemporaryDirectory() as tmp:
            path = save_checkpoint(model, Path(tmp) / "bench.pth", tokenizer=tok.to_config())
            peer = RWKV(str(Path(path).with_suffix("")), "cpu fp32")
        for batch in (int(b) for b in args.batches.split(",")):
            results = {"step": [], "session": [], "peer": []}
            for _ in range(args.rounds):
                state = model.init_state(batch)
                tokens = torch.randint(3, tok.vocab_size, (batch,))
                with torch.inference_mode():
                    def ours():
                        nonlocal state
                        _, state = model.step(tokens, state)
                    results["step"].append(summary(timed(ours, args.steps), batch))
                session = GenerationSession(model, tok, SamplingConfig(seed=0), alternatives=batch, max_tokens=10**9)
                session.prefill()
                results["session"].append(summary(timed(session.step, args.steps), batch))
                peer_states = [None] * batch

                def theirs():
                    for b in range(batch):
                        _, peer_states[b] = peer.forward([int(tokens[b])], peer_states[b])
                results["peer"].append(summary(timed(theirs, args.steps), batch))
            med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in results.items()}
            rows_out.append((size, batch, med))

    print(f"# decode (RNN mode), CPU: {cpu_name()}, {args.threads} thread(s), torch {torch.__version__}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print()
    print("| model | batch | PianoMuse step tok/s (p99 ms) | PianoMuse session tok/s (p99 ms) | rwkv 0.8 tok/s (p99 ms) | step speed-up | session speed-up |")
    print("|---|---|---|---|---|---|---|")
    for size, batch, med in rows_out:
        s, g, p = med["step"], med["session"], med["peer"]
        print(f"| L{size.replace('x', '-D')} | {batch} | {s[0]:.0f} ({s[1]:.2f}) | {g[0]:.0f} ({g[1]:.2f}) | {p[0]:.0f} ({p[1]:.2f}) | "
              f"{s[0] / p[0]:.2f}x | {g[0] / p[0]:.2f}x |")


if __name__ == "__main__":
    main()

"""The CUDA kernels of one RNN step and its draw, per lever, from torch.profiler (issue 12).

    python3 bench/rnn_step_profile.py [--size 12x768] [--batch 1] [--configs baseline,triton,...] [--json FILE]

One random-weight model (V = 512, fp32 weights and state, the same seed for every config); per
config the levers are set, the step is warmed up (graph capture, Triton compile), then one step
plus its draw is profiled twice: replayed from the captured CUDA graph (the default runner) and
eager (each op launched from Python: the kernels the graph holds, counted where the profiler
cannot see inside a graph). Printed per config: kernel name, launches, total GPU microseconds,
sorted by time; and one summary row per config (kernels, their total GPU time, the wall time of
the profiled step). Configs (levers off unless named):
- baseline: the PyTorch step, logits to the host and sampled there (the engine before issue 12's levers);
- triton: each layer's element-wise work as five Triton kernels (model.rnn_triton);
- sampler: the draw on the GPU in its own captured graph (engine.generate.sampling);
- bf16: the weight cache in bf16 (model.rnn_weight_dtype);
- all: every lever.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from engine.generate.sampling import SamplingConfig, sample_rows
from engine.model import RWKV7, ModelConfig

CONFIGS = {  # name: (fused tail, weight cache dtype, sampler)
    "baseline": (False, None, "host"),
    "triton": (True, None, "host"),
    "sampler": (False, None, "device"),
    "bf16": (False, torch.bfloat16, "host"),
    "all": (True, torch.bfloat16, "device"),
}


def one_step(model, token, state, sampler: str, gens, allowed, config):
    logits, state = model.step(token, state)
    if sampler == "host":
        return sample_rows(logits.float().cpu(), allowed.cpu(), config, gens, [[]] * len(gens)), state
    return sample_rows(logits, allowed, config, gens, [[]] * len(gens)), state


def profile_config(model, name: str, batch: int, graphed: bool) -> dict:
    from torch.profiler import ProfilerActivity, profile

    fused, dtype, sampler = CONFIGS[name]
    model.rnn_triton, model.rnn_weight_dtype = fused, dtype
    model._rnn_traces = {}  # this config's runner only (its key then says whether Triton ran)
    model.rnn_trace = graphed  # the graphed runner needs tracing on; off: the eager step
    model.rnn_cuda_graph = graphed
    config = SamplingConfig(temperature=1.0, top_p=0.95)
    gens = [torch.Generator().manual_seed(r) for r in range(batch)]
    allowed = torch.ones(batch, model.config.vocab_size, dtype=torch.bool, device="cuda")
    token = torch.arange(3, 3 + batch, device="cuda")
    with torch.inference_mode():
        state = model.init_state(batch)
        for _ in range(3):
            _, state = one_step(model, token, state, sampler, gens, allowed, config)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            one_step(model, token, state, sampler, gens, allowed, config)
            torch.cuda.synchronize()
            wall_us = (time.perf_counter() - t0) * 1e6
    kernels: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            k = kernels[e.name[:90]]
            k[0] += 1
            k[1] += e.time_range.elapsed_us()
    table = sorted(([n, c, round(us, 1)] for n, (c, us) in kernels.items()), key=lambda r: -r[2])
    fused_used = any(k[0] == "graph" and len(k) == 7 and k[5] for k in model._rnn_traces) if graphed else fused
    return {"config": name, "runner": "graphed" if graphed else "eager", "batch": batch, "sampler": sampler,
            "triton": bool(fused_used), "weight_dtype": str(dtype or torch.float32).replace("torch.", ""),
            "kernels": sum(r[1] for r in table), "gpu_us": round(sum(r[2] for r in table), 1),
            "wall_us": round(wall_us, 1), "table": table}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="12x768", help="LAYERSxWIDTH")
    ap.add_argument("--arch", default="x080", choices=("x070", "x080"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    ap.add_argument("--top", type=int, default=20, help="kernel rows printed per config")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    L, D = (int(x) for x in args.size.lower().split("x"))
    torch.manual_seed(0)
    model = RWKV7(ModelConfig(arch=args.arch, n_layer=L, n_embd=D, vocab_size=512, head_size=64))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model = model.cuda().eval()
    rows = []
    for name in args.configs.split(","):
        for graphed in (True, False):
            try:
                r = profile_config(model, name, args.batch, graphed)
            except Exception as err:  # noqa: BLE001 - one lever that fails must not cost the others' tables
                print(f"\n### {name}, {'graphed' if graphed else 'eager'}: failed: {type(err).__name__}: {err}")
                continue
            r["size"] = f"L{L}-D{D}"
            rows.append(r)
            print(f"\n### {r['size']} b{r['batch']} {name}, {r['runner']} ({'triton' if r['triton'] else 'pytorch'} step, "
                  f"weights {r['weight_dtype']}, {r['sampler']} sampler): {r['kernels']} kernels, {r['gpu_us']} us on the GPU, "
                  f"{r['wall_us']} us wall\n\n| kernel | count | total us |\n|---|---|---|")
            for kname, count, us in r["table"][: args.top]:
                print(f"| {kname} | {count} | {us} |")
    print("\n| config | runner | kernels | GPU us | wall us |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['runner']} | {r['kernels']} | {r['gpu_us']} | {r['wall_us']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

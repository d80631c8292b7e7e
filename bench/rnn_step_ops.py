"""Kernels per layer in the recurrent (RNN) step: aten compute ops counted on CPU, eager step.

    python3 bench/rnn_step_ops.py [--sizes 12x768,8x256] [--arch x080] [--batch 1] [--old DIR]

At batch 1 on a GPU the step is bound by kernel launches, not by arithmetic (12 layers x a few
dozen small kernels against ~60 us of weight reads at HBM speed), so the number of ops is the
quantity to cut. Each non-view aten op the eager step dispatches (under ``torch.no_grad``, so
composite ops such as ``matmul`` show as the ``mm``/``bmm`` they run) is roughly one CUDA kernel
in the captured graph (a few, such as GroupNorm, launch two). ``--old DIR`` also counts the step
of another checkout's ``engine`` package (e.g. ``git worktree add DIR <commit>``) in a child
process, for a before/after table from one run. ``--triton`` counts the step with its Triton
kernels (engine.kernels.rnn_triton, the CUDA default where Triton imports) beside the PyTorch
step: the aten ops left plus the Triton launches, the kernels run under Triton's CPU interpreter.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
from pathlib import Path

if "--triton" in sys.argv:  # Triton reads this when first imported: before anything imports it
    os.environ["TRITON_INTERPRET"] = "1"

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
# ops that allocate or relabel memory without running a kernel
_FREE = {"empty", "empty_like", "empty_strided", "detach", "detach_", "alias", "_unsafe_view", "lift_fresh"}


class OpCounter(TorchDispatchMode):
    """Counts the compute ops (not views, not bare allocations) dispatched inside it, by name."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if not func.is_view and name not in _FREE:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def count_step_ops(model, batch: int = 1) -> collections.Counter:
    """The ops of one eager RNN step of ``model`` (after a warm-up step that builds the weight cache)."""
    model.rnn_trace = False
    tokens = torch.arange(batch) % model.config.vocab_size
    with torch.no_grad():
        state = model.init_state(batch)
        _, state = model.step(tokens, state)
        with OpCounter() as counter:
            model.step(tokens, state)
    return counter.counts


# what Triton's interpreter dispatches to move a kernel's arguments, not ops of the step
_INTERPRETER = {"set_", "new_empty", "copy_"}


def count_triton_step_ops(model, batch: int = 1) -> collections.Counter:
    """The ops of one eager RNN step with the Triton kernels (on CPU, interpreted): aten compute
    ops plus one per Triton launch (named ``triton:<kernel>``)."""
    from engine.kernels import rnn_triton

    module = rnn_triton._kernels()
    launches: collections.Counter[str] = collections.Counter()

    class Counted:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches["triton:" + self.name] += 1
                return self.kernel[grid](*args, **kwargs)
            return launch

    names = [n for n in dir(module) if n.endswith("_kernel")]
    saved = {n: getattr(module, n) for n in names}
    tokens = torch.arange(batch) % model.config.vocab_size
    try:
        for n in names:
            setattr(module, n, Counted(n.removesuffix("_kernel"), saved[n]))
        with torch.no_grad():
            pack = model._rnn_weights()
            state = model.init_state(batch)
            with OpCounter() as counter:
                model._step_layers(pack, tokens, state.att_shift, state.wkv, state.ffn_shift, use_triton=True)
    finally:
        for n in names:
            setattr(module, n, saved[n])
    counts = collections.Counter({k: v for k, v in counter.counts.items() if k not in _INTERPRETER})
    return counts + launches


def count_cuda_kernels(model, batch: int = 1) -> collections.Counter:
    """The CUDA kernels one eager RNN step of ``model`` (on a GPU) launches, by kernel name."""
    from torch.profiler import ProfilerActivity, profile

    model.rnn_trace = False
    device = next(model.parameters()).device
    tokens = (torch.arange(batch) % model.config.vocab_size).to(device)
    with torch.no_grad():
        state = model.init_state(batch)
        for _ in range(2):
            _, state = model.step(tokens, state)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model.step(tokens, state)
            torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return collections.Counter(e.name[:60] for e in kernels)


def _measure(sizes: list[tuple[int, int]], arch: str, batch: int, device: str, triton: bool = False) -> list[dict]:
    from engine.model import RWKV7, ModelConfig

    rows = []
    for L, D in sizes:
        torch.manual_seed(0)
        model = RWKV7(ModelConfig(arch=arch, n_layer=L, n_embd=D, vocab_size=512, head_size=64)).to(device).eval()
        steps = [("pytorch", count_step_ops if device == "cpu" else count_cuda_kernels)]
        if triton:
            steps.append(("triton", count_triton_step_ops))
        for name, count in steps:
            counts = count(model, batch)
            total = sum(counts.values())
            rows.append({"size": f"L{L}-D{D}", "arch": arch, "batch": batch, "device": device, "step": name, "ops": total,
                         "ops_per_layer": total / L, "by_op": dict(counts.most_common())})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="12x768,8x256", help="LAYERSxWIDTH list")
    ap.add_argument("--arch", default="x080", choices=("x070", "x080"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="cpu: aten ops dispatched; cuda: CUDA kernels launched (torch.profiler)")
    ap.add_argument("--triton", action="store_true", help="also the step with its Triton kernels (interpreted on the CPU)")
    ap.add_argument("--old", default=None, help="another checkout whose engine is counted too (before/after)")
    ap.add_argument("--json", default=None, help="write the rows as JSON here")
    ap.add_argument("--rows-only", action="store_true", help=argparse.SUPPRESS)  # the child process of --old
    args = ap.parse_args(argv)
    sizes = [tuple(int(x) for x in s.lower().split("x")) for s in args.sizes.split(",")]
    if args.triton and args.device != "cpu":
        ap.error("--triton counts on the CPU (the GPU's kernels: bench/rnn_step_profile.py)")
    rows = _measure(sizes, args.arch, args.batch, args.device, args.triton)
    if args.rows_only:
        print(json.dumps(rows))
        return 0
    for r in rows:
        r["tree"] = "this"
    if args.old:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--sizes", args.sizes, "--arch", args.arch,
               "--batch", str(args.batch), "--device", args.device, "--rows-only"]
        env = dict(os.environ, PYTHONPATH=str(Path(args.old).resolve()))
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=args.old, check=True)
        old = json.loads(done.stdout.strip().splitlines()[-1])
        for r in old:
            r["tree"] = f"old ({args.old})"
        rows = old + rows
    what = "aten ops" if args.device == "cpu" else "CUDA kernels"
    print(f"| tree | model | arch | batch | step | {what} per step | per layer | most frequent |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        top = ", ".join(f"{k} {v}" for k, v in list(r["by_op"].items())[:6])
        print(f"| {r['tree']} | {r['size']} | {r['arch']} | {r['batch']} | {r.get('step', 'pytorch')} | {r['ops']} | {r['ops_per_layer']:.1f} | {top} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    if "--rows-only" not in sys.argv:  # the --old child imports that checkout's engine (PYTHONPATH)
        sys.path.insert(0, str(REPO))
    sys.exit(main())

"""Weight averaging on the CPU: validation loss of the trained weights and of their EMA along a run.

    python3 bench/train_ema_cpu.py                                  # tiny preset, 600 steps, 3 decays
    python3 bench/train_ema_cpu.py --steps 600 --decays 0.99,0.995,0.999 --train-samples 200 --set optim.lr=3e-3

One `pianomuse-tui --headless train --preset P` per decay, in its own process, on the bundled
corpus with the same seed, validating every --val-every steps on the first --val-batches
micro-batches of the validation split (auditions and checkpoints off). The averaged weights never
feed back into training, so every run trains the same raw weights: the raw column is the first
run's and the script says if another run's differs. --train-samples N keeps only the first N
training windows, a data-limited run that overfits like the bundled model's does on the GPU. The
table has each validation's losses, then each column's lowest (with its step) and last value.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.metric_records import ValRecord  # noqa: E402
from engine.rundir import read_metrics  # noqa: E402


def run_once(args: argparse.Namespace, decay: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="pianomuse-bench-") as root:
        command = [sys.executable, "-m", "pianomuse_tui.cli", "--headless", "train", "--preset", args.preset,
                   "--max-steps", str(args.steps), "--run-dir", root, "--device", "cpu", "--train.seed", str(args.seed),
                   "--train.ema_decay", str(decay), "--eval.val_every", str(args.val_every),
                   "--eval.val_max_batches", str(args.val_batches), "--eval.audition_every", "0",
                   "--run.checkpoint_every", "0", "--run.log_every", str(args.val_every),
                   "--data.max_train_samples", str(args.train_samples), *(f"--{o}" for o in args.extra)]
        load = os.getloadavg()[0]
        began = time.perf_counter()
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(args.threads))
        out = subprocess.run(command, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"the run with train.ema_decay={decay} failed: {out.stderr[-2000:]}")
        (metrics,) = Path(root).glob("*/metrics.jsonl")
        vals = [r for r in read_metrics(metrics) if isinstance(r, ValRecord)]
    return {"decay": decay, "vals": {v.step: v for v in vals}, "wall_s": time.perf_counter() - began,
            "load_before": load, "load_after": os.getloadavg()[0], "command": command}


def table(runs: list[dict]) -> list[str]:
    """The markdown rows: one per validation, then each column's lowest and last value."""
    steps = sorted(runs[0]["vals"])
    columns = [("raw", {s: runs[0]["vals"][s].val_loss for s in steps})]
    columns += [(f"EMA {r['decay']}", {s: r["vals"][s].ema_val_loss for s in steps}) for r in runs]
    lines = ["| step | " + " | ".join(name for name, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for s in steps:
        lines.append(f"| {s} | " + " | ".join(f"{col[s]:.4f}" for _, col in columns) + " |")
    lowest = [min(col.items(), key=lambda kv: kv[1]) for _, col in columns]
    lines.append("| lowest (step) | " + " | ".join(f"**{v:.4f}** ({s})" for s, v in lowest) + " |")
    lines.append("| last | " + " | ".join(f"{col[steps[-1]]:.4f}" for _, col in columns) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--decays", default="0.99,0.995,0.999")
    parser.add_argument("--val-every", type=int, default=50)
    parser.add_argument("--val-batches", type=int, default=8, help="validation micro-batches (0 = the whole split)")
    parser.add_argument("--train-samples", type=int, default=0, help="only the first N training windows (0 = all)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of every run: the same count gives every run the same raw weights")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="another config override for every run (repeatable)")
    args = parser.parse_args(argv)
    try:
        decays = [float(d) for d in args.decays.split(",")]
    except ValueError:
        parser.error(f"--decays takes numbers separated by commas, e.g. 0.99,0.999, got {args.decays!r}")
    began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs = []
    for decay in decays:
        runs.append(run_once(args, decay))
        r = runs[-1]
        print(f"train.ema_decay={decay}: {r['wall_s']:.0f} s, load {r['load_before']:.1f} / {r['load_after']:.1f}",
              file=sys.stderr, flush=True)
    raw = lambda run: [v.val_loss for v in run["vals"].values()]  # noqa: E731
    differing = {r["decay"]: max(abs(a - b) for a, b in zip(raw(r), raw(runs[0]))) for r in runs[1:] if raw(r) != raw(runs[0])}
    print(f"{os.cpu_count()} CPU cores, {args.threads} torch thread(s), began {began}; preset {args.preset}, {args.steps} steps, seed {args.seed}, "
          f"training windows: {args.train_samples or 'all'}")
    words = ["TMP" if i and runs[0]["command"][i - 1] == "--run-dir" else w for i, w in enumerate(runs[0]["command"])]
    print("command of the first run: " + " ".join(["pianomuse-tui", *words[3:]]))
    print("wall s / load average before, after: " + "; ".join(
        f"{r['decay']}: {r['wall_s']:.0f} s / {r['load_before']:.1f}, {r['load_after']:.1f}" for r in runs))
    if differing:
        print(f"note: the raw weights' validation differed from the first run's (decay: largest difference) {differing}")
    print("\n".join(table(runs)))


if __name__ == "__main__":
    main()

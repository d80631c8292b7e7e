"""Train the bundled model and export its best-validation checkpoint in bf16.

    python3 scripts/train_bundled_model.py [--minutes 4.5] [--out assets/models]

Trains assets/configs/bundled.toml on the bundled corpus (GPU if present), stops when the step
budget or the wall-clock budget is spent, then picks the checkpoint with the lowest validation
loss (so the exported model is the one from before validation stopped improving) and writes it
to OUT/pianomuse-v8-small.pth in bf16, with its sidecar, its resolved training config and its
metrics.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from engine.model import load_checkpoint, save_checkpoint  # noqa: E402
from engine.paths import CONFIGS_DIR, MODELS_DIR  # noqa: E402
from engine.train.checkpointing import list_checkpoints  # noqa: E402
from engine.train.config import load_config  # noqa: E402
from engine.train.metrics import read_metrics  # noqa: E402
from engine.train.trainer import run_training  # noqa: E402

NAME = "pianomuse-v8-small"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=4.5, help="wall-clock budget for training")
    ap.add_argument("--out", default=str(MODELS_DIR))
    ap.add_argument("--run-root", default="runs")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=3000")
    args = ap.parse_args()

    cfg = load_config(CONFIGS_DIR / "bundled.toml", None, [f"run.root={args.run_root}", *args.overrides])
    stop = threading.Event()
    timer = threading.Timer(args.minutes * 60.0, stop.set)
    timer.daemon = True
    timer.start()
    result = run_training(cfg, stop_event=stop)
    timer.cancel()
    print(f"training {result.status} at step {result.step} ({result.tokens} tokens): {result.message}")

    run_dir = Path(result.run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    vals = [r for r in records if r.get("kind") == "val" and r.get("val_loss") is not None]
    ckpts = {int(p.name.split("-")[1]): p for p in list_checkpoints(run_dir)}  # complete ones only
    scored = [(r["val_loss"], r["step"], r) for r in vals if r["step"] in ckpts]
    if not scored:
        print("no validated checkpoint to export", file=sys.stderr)
        return 1
    best_loss, best_step, best = min(scored, key=lambda x: x[0])
    print(f"best validation loss {best_loss:.4f} nats/token at step {best_step} (of {len(vals)} validations)")

    model, sidecar = load_checkpoint(ckpts[best_step] / "model.pth")
    model = model.to(torch.bfloat16)
    out = Path(args.out)
    extra = {
        "trained_with": "python3 scripts/train_bundled_model.py --minutes %g" % args.minutes,
        "config": "assets/configs/bundled.toml",
        "data": "assets/corpus (bundled demo corpus), transposition augmentation +-6 semitones",
        "step": best_step,
        "tokens": best.get("tokens"),
        "val_loss": best_loss,
        "bits_per_note": best.get("bits_per_note"),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "stopped": result.status,
        "last_step": result.step,
    }
    save_checkpoint(model, out / f"{NAME}.pth", tokenizer=sidecar.get("tokenizer"), extra=extra)
    shutil.copy(run_dir / "config.toml", out / f"{NAME}.train.toml")
    shutil.copy(run_dir / "metrics.jsonl", out / f"{NAME}.metrics.jsonl")
    print(json.dumps(extra, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

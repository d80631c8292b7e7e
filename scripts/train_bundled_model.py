"""Train the bundled model, export its best-validation checkpoint in bf16, and evaluate it.

    python3 scripts/train_bundled_model.py [--minutes 6] [--out assets/models] [--eval-samples 64]

Trains assets/configs/bundled.toml on the bundled corpus (GPU if present), stops when the step
budget or the wall-clock budget is spent, then picks the checkpoint with the lowest validation
loss (so the exported model is the one from before validation stopped improving; with
train.ema_decay, its weights or their moving average, whichever validated better) and writes it
to OUT/pianomuse-v8-small.pth in bf16, with its sidecar, its resolved training config and its
metrics. Then it runs the evaluation (`eval`: likelihood beside the n-gram baseline, structure,
validity, copies, the goals) on the exported model and writes OUT/pianomuse-v8-small.eval.json
and .png, and OUT/pianomuse-v8-small.run.md: the command, device, minutes, data and goals.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from engine.model import save_checkpoint  # noqa: E402
from engine.paths import CONFIGS_DIR, MODELS_DIR  # noqa: E402
from engine.train.config import load_config  # noqa: E402
from engine.train.export import best_validated_weights, load_best_weights  # noqa: E402
from engine.train.trainer import run_training  # noqa: E402

NAME = "pianomuse-v8-small"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=6.0, help="wall-clock budget for training")
    ap.add_argument("--eval-samples", type=int, default=64, help="continuations the evaluation generates (0: no evaluation)")
    ap.add_argument("--out", default=str(MODELS_DIR))
    ap.add_argument("--run-root", default="runs")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=3000")
    args = ap.parse_args()

    began = time.monotonic()
    cfg = load_config(CONFIGS_DIR / "bundled.toml", None, [f"run.root={args.run_root}", *args.overrides])
    stop = threading.Event()
    timer = threading.Timer(args.minutes * 60.0, stop.set)
    timer.daemon = True
    timer.start()
    result = run_training(cfg, stop_event=stop)
    timer.cancel()
    print(f"training {result.status} at step {result.step} ({result.tokens} tokens): {result.message}")

    run_dir = Path(result.run_dir)
    best = best_validated_weights(run_dir)
    if best is None:
        print("no validated checkpoint to export", file=sys.stderr)
        return 1
    print(f"best validation: {best.describe()}")

    model, sidecar = load_best_weights(best)
    model = model.to(torch.bfloat16)
    out = Path(args.out)
    train_minutes = (time.monotonic() - began) / 60.0
    extra = {
        "trained_with": " ".join(["python3 scripts/train_bundled_model.py", *sys.argv[1:]]),
        "config": "assets/configs/bundled.toml",
        "data": f"assets/corpus (bundled demo corpus, {_corpus_summary()}), transposition augmentation "
                f"+-{cfg.data.transpose_range} semitones",
        "minutes": round(train_minutes, 2),
        "step": best.step,
        "tokens": best.val.tokens,
        "val_loss": best.val_loss,
        "bits_per_note": best.bits_per_note,
        "weights": best.weights,  # "raw" or "ema" (the moving average of the weights)
        "ema_decay": cfg.train.ema_decay or None,
        "exported": best.describe(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "stopped": result.status,
        "last_step": result.step,
    }
    save_checkpoint(model, out / f"{NAME}.pth", tokenizer=sidecar.get("tokenizer"), extra=extra)
    shutil.copy(run_dir / "config.toml", out / f"{NAME}.train.toml")
    shutil.copy(run_dir / "metrics.jsonl", out / f"{NAME}.metrics.jsonl")
    print(json.dumps(extra, indent=2))
    if args.eval_samples > 0:
        report = _evaluate(out / f"{NAME}.pth", args.eval_samples, cfg.data.transpose_range)
        _write_run_record(out, extra, report)
    return 0


def _corpus_summary() -> str:
    from engine.paths import CORPUS_DIR

    styles = {d.name: len(list(d.glob("*.mid"))) for d in sorted(CORPUS_DIR.iterdir()) if d.is_dir()}
    return ", ".join(f"{n} {name}" for name, n in styles.items())


def _evaluate(pth: Path, samples: int, transpose_range: int) -> dict:
    """The `eval` report of the exported model on the corpus's validation split, written beside it."""
    from engine.atomic import write_atomic
    from engine.eval.report import EvalOptions, evaluate, write_report
    from engine.eval.sources import load_eval_inputs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, data, _ = load_eval_inputs(pth, None, device=device)
    report = evaluate(model, data, EvalOptions(samples=samples, transpose_range=transpose_range),
                      on_progress=lambda stage, done, total: None)
    report["checkpoint"] = str(pth.relative_to(REPO) if pth.is_relative_to(REPO) else pth)
    report["model"] = {**model.config.to_dict(), "parameters": model.parameter_count()}
    json_path, _ = write_report(report, pth.with_suffix(".eval.json"))
    # the report travels with the repository: its file names are relative to the repository's root
    write_atomic(json_path, json_path.read_text(encoding="utf-8").replace(f"{REPO}/", ""))
    lik, base = report["likelihood"], report["baseline"]
    print(f"validation: {lik['bits_per_note']:.3f} bits/note; {base['order']}-gram baseline {base['bits_per_note']:.3f} "
          f"(ratio {base['model_over_baseline']:.3f})")
    for name, goal in report["goals"].items():
        print(f"goal {name}: {goal['value']:.3f} ({goal['goal']}): {'met' if goal['met'] else 'NOT met'}")
    return report


def _write_run_record(out: Path, extra: dict, report: dict) -> None:
    lines = [f"# {NAME}: how it was trained", "",
             f"- command: `{extra['trained_with']}`", f"- device: {extra['device']}",
             f"- training minutes: {extra['minutes']}", f"- data: {extra['data']}",
             f"- exported step {extra['step']} of {extra['last_step']} ({extra['tokens']} tokens): {extra['exported']}", "", "| goal | value | target | met |", "|---|---|---|---|"]
    for name, goal in report["goals"].items():
        lines.append(f"| {name} | {goal['value']:.3f} | {goal['goal']} | {'yes' if goal['met'] else 'no'} |")
    (out / f"{NAME}.run.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())

"""One line per weights kind: the lowest validation loss of a run's metrics.jsonl and its step.

    python3 bench/gpu/val_summary.py RUN/metrics.jsonl

"raw" is the trained weights, "ema" their moving average (runs with train.ema_decay only).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.metric_records import ValRecord
from engine.rundir import read_metrics


def lowest(path: Path) -> list[str]:
    vals = [r for r in read_metrics(path) if isinstance(r, ValRecord)]
    lines = []
    for kind, loss in (("raw", lambda r: r.val_loss), ("ema", lambda r: r.ema_val_loss)):
        scored = [(loss(r), r.step) for r in vals if loss(r) is not None]
        if scored:
            value, step = min(scored)
            lines.append(f"  {kind}: lowest val {value:.4f} at step {step}, last {scored[-1][0]:.4f} at step {scored[-1][1]}")
    return lines


if __name__ == "__main__":
    print("\n".join(lowest(Path(sys.argv[1]))))

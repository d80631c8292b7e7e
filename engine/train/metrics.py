"""metrics.jsonl: one JSON object per line, append-only, so anyone can tail a run.

Every record has ``kind`` ("train" | "val" | "audition" | "checkpoint" | "status"), ``step``
(optimizer steps done), ``tokens`` (training tokens seen), ``time`` (Unix seconds) and
``elapsed_s``. The remaining fields depend on the kind; see docs/training.md for the table.
Readers use ``engine.rundir`` (``MetricsTail``, ``read_metrics``), which types the records.
Only rank 0 writes; the optional ``on_metrics`` callback sees every record it writes.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

MetricsCallback = Callable[[dict], None]


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf; a non-finite loss is reported as null plus the "finite": false flag
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    def __init__(self, path: Path | None, on_metrics: MetricsCallback | None = None, start_time: float | None = None):
        self.path = Path(path) if path is not None else None
        self.on_metrics = on_metrics
        self.start = start_time if start_time is not None else time.time()
        self._file = open(self.path, "a", encoding="utf-8") if self.path is not None else None
        self._tb = None

    def enable_tensorboard(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # optional extra

        self._tb = SummaryWriter(log_dir=str(log_dir))

    def write(self, kind: str, step: int, tokens: int, **fields: Any) -> dict:
        now = time.time()
        record = {"kind": kind, "step": step, "tokens": tokens, "time": round(now, 3), "elapsed_s": round(now - self.start, 3)}
        record.update({k: _clean(v) for k, v in fields.items()})
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None and kind in ("train", "val"):
            for key, value in fields.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)
        if self.on_metrics is not None:
            self.on_metrics(record)
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


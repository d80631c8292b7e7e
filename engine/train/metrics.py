"""metrics.jsonl: one JSON object per line, append-only, so anyone can tail a run.

The lines are the typed records of ``engine.metric_records`` (one dataclass per kind: "train",
"val", "audition", "checkpoint", "status"); docs/training.md has the table. Readers use
``engine.rundir`` (``MetricsTail``, ``read_metrics``), which gives the same records back. Only
rank 0 writes; the optional ``on_metrics`` callback sees every record as a reader would read it.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from engine.metric_records import COMMON_FIELDS, MetricRecord, parse_record

MetricsCallback = Callable[[MetricRecord], None]


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

    def write(self, record: MetricRecord) -> MetricRecord:
        """Stamp ``record`` with the time, append its line; returns it as a reader will read it."""
        now = time.time()
        line = replace(record, time=round(now, 3), elapsed_s=round(now - self.start, 3)).to_json()
        if self._file is not None:
            self._file.write(json.dumps(line) + "\n")
            self._file.flush()
        if self._tb is not None and record.kind in ("train", "val"):
            for key, value in line.items():
                if key not in COMMON_FIELDS and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(f"{record.kind}/{key}", value, record.step)
        written = parse_record(line)
        if self.on_metrics is not None:
            self.on_metrics(written)
        return written

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

"""The records of metrics.jsonl are typed, one dataclass per kind, declared once for the writer
(MetricsLog) and every reader (read_metrics, MetricsTail, the panes)."""
from __future__ import annotations

import json
import math

from engine.rundir import read_metrics
from engine.train.metrics import MetricsLog
from engine.metric_records import (
    AuditionRecord, CheckpointRecord, OtherRecord, StatusRecord, TrainRecord, ValRecord, parse_record,
)


def test_each_kind_reads_back_as_it_was_written(tmp_path):
    written = [
        StatusRecord(step=0, state="started", run_dir="runs/x", device="cpu", parameters=1234, max_steps=10,
                     frozen=["emb.weight"], lr=1e-3),
        TrainRecord(step=1, tokens=256, loss=5.5, lr=1e-3, grad_norm=2.0, tokens_per_s=900.0),
        ValRecord(step=1, tokens=256, val_loss=5.0, bits_per_note=20.0, val_tokens=100, val_notes=30),
        AuditionRecord(step=1, tokens=256, path="a.mid", notes=12, scores={"pitch_class_oa": 0.5, "copied_notes": 3}),
        CheckpointRecord(step=1, tokens=256, path="checkpoints/step-00000001", reason="final"),
        StatusRecord(step=1, tokens=256, state="finished", message="finished 1 steps", bad_steps_total=0),
    ]
    seen = []
    log = MetricsLog(tmp_path / "metrics.jsonl", on_metrics=seen.append)
    for record in written:
        log.write(record)
    log.close()
    read = read_metrics(tmp_path)
    assert read == seen and [type(r) for r in read] == [type(r) for r in written]
    assert all(r.time > 0 and r.extra == {} for r in read)
    assert [r.kind for r in read] == ["status", "train", "val", "audition", "checkpoint", "status"]
    assert read[1].loss == 5.5 and read[2].bits_per_note == 20.0 and read[0].frozen == ["emb.weight"]
    # an audition's scores sit flat in its line, as before, and read back through named accessors
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[3])
    assert line["pitch_class_oa"] == 0.5 and "scores" not in line
    assert (read[3].pitch_class_oa, read[3].copied_notes, read[3].self_reuse) == (0.5, 3, None)
    assert read[5].state in StatusRecord.ENDED and read[0].began and read[5].resumed_at is None


def test_a_non_finite_value_is_written_null_and_read_as_none(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    back = log.write(StatusRecord(step=3, state="bad_step", loss=math.nan, grad_norm=math.inf, consecutive=1))
    log.close()
    assert '"loss": null' not in (tmp_path / "metrics.jsonl").read_text()  # None is left out of the line
    assert back.loss is None and back.grad_norm is None and back.consecutive == 1


def test_reading_is_forgiving_and_loses_nothing():
    line = {"kind": "train", "step": 4, "tokens": "many", "loss": "nan?", "lr": 1, "future_field": [1, 2]}
    record = parse_record(line)
    assert isinstance(record, TrainRecord)
    assert record.tokens == 0 and record.loss is None and record.lr == 1.0 and isinstance(record.lr, float)
    assert record.extra == {"future_field": [1, 2]} and record.to_json()["future_field"] == [1, 2]
    other = parse_record({"kind": "gpu_temperature", "step": 2, "celsius": 71})
    assert isinstance(other, OtherRecord) and other.kind == "gpu_temperature"
    assert other.to_json() == {"kind": "gpu_temperature", "step": 2, "tokens": 0, "time": 0.0, "elapsed_s": 0.0, "celsius": 71}
    assert parse_record({"kind": "val", "step": True}) is None and parse_record({"step": 1}) is None
    assert parse_record({"kind": "status", "step": 5, "state": "resumed"}).resumed_at == 5

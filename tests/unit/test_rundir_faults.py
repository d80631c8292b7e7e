"""Faults around a run folder (issue 18 items 1, 4, 5, 6, 13, 14) on real micro training runs:
resume never takes or alters another run, damaged checkpoints are found before anything is
loaded or pruned, one trainer per run, killed saves are cleaned up, and re-done steps are dropped
from the metrics readers see."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine import rundir
from engine.model import CheckpointError, load_checkpoint
from engine.rundir import MetricsTail, RunBusy, RunError, read_metrics
from engine.metric_records import parse_record
from engine.train.config import load_config
from engine.train.launch import resolve_config
from engine.train.trainer import run_training
from engine.train.request import TrainRequest
from pianomuse_tui.training_process import launch_problem
from train_helpers import micro_overrides, small_store


def _config(root: Path, **extra):
    return load_config(preset="tiny", overrides=micro_overrides(small_store(), root, **extra))


class Killed(Exception):
    """Stands for a kill: the trainer stops where it is, without saving."""


def _killed_at(step: int):
    def on_metrics(record: dict) -> None:
        if record.kind == "train" and record.step == step:
            raise Killed

    return on_metrics


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != rundir.LOCK}


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_resume_auto_continues_the_newest_run_or_says_why_and_never_touches_another(tmp_path):
    root = tmp_path / "runs"
    finished = run_training(_config(root, **{"train.max_steps": 2, "run.name": "done"}))
    assert finished.status == "finished"
    before = _snapshot(finished.run_dir)
    with pytest.raises(Killed):  # the new run dies before its first checkpoint
        run_training(_config(root, **{"train.max_steps": 300, "run.name": "new"}), on_metrics=_killed_at(1))
    (new,) = [p for p in root.iterdir() if p.name.endswith("-new")]

    with pytest.raises(RunError, match=f"run {new} has no checkpoint yet"):
        resolve_config(None, "tiny", [], run_root=root, resume="auto", max_steps=300)
    with pytest.raises(RunError, match="has no checkpoint yet"):
        run_training(_config(root, **{"run.resume": "auto", "train.max_steps": 300}))
    assert "Cannot resume: run" in launch_problem(TrainRequest(resume="auto", run_root=str(root)))
    assert _snapshot(finished.run_dir) == before  # its config, checkpoints and metrics are untouched


def test_a_bit_flip_is_caught_the_intact_checkpoint_is_resumed_and_never_pruned(tmp_path):
    settings = {"train.max_steps": 3, "run.checkpoint_every": 1, "run.keep_checkpoints": 2}
    straight = run_training(_config(tmp_path / "a", **settings))
    run = run_training(_config(tmp_path / "b", **settings)).run_dir
    damaged = run / "checkpoints" / "step-00000003"
    _flip_a_byte(damaged / "model.pth")

    with pytest.raises(CheckpointError, match="does not match the checksum.*newest intact checkpoint of that run is .*step-00000002"):
        load_checkpoint(damaged / "model.pth")  # what generate and eval call
    assert rundir.resolve_checkpoint(run) == run / "checkpoints" / "step-00000002" / "model.pth"

    point = rundir.find_resume_point(str(run), tmp_path)
    assert point.checkpoint.name == "step-00000002" and "step-00000003: its model.pth does not match" in point.note
    resumed = run_training(resolve_config(None, None, [], resume=str(run)))
    assert resumed.status == "finished" and resumed.step == 3
    losses = {r.step: r.loss for r in read_metrics(run) if r.kind == "train"}
    assert losses == {r.step: r.loss for r in read_metrics(straight.run_dir) if r.kind == "train"}  # exact: continued from step 2
    notes = [r.message for r in read_metrics(run) if r.kind == "status" and r.state == "note"]
    assert len(notes) == 1 and "set aside as .damaged-step-00000003" in notes[0]
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [".damaged-step-00000003", "latest", "step-00000002", "step-00000003"]


def test_a_truncated_trainer_state_falls_back_or_stops_before_changing_anything(tmp_path):
    run = run_training(_config(tmp_path, **{"train.max_steps": 2, "run.checkpoint_every": 1})).run_dir
    newest = run / "checkpoints" / "step-00000002" / "trainer.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    point = rundir.find_resume_point("auto", tmp_path)
    assert point.checkpoint.name == "step-00000001" and "trainer.pt does not match" in point.note

    older = run / "checkpoints" / "step-00000001" / "model.pth"
    older.write_bytes(older.read_bytes()[:-10])
    before = _snapshot(run)
    with pytest.raises(RunError, match="cannot be resumed: skipped damaged checkpoint.*no intact checkpoint is left"):
        resolve_config(None, None, [], resume=str(run), max_steps=4)
    with pytest.raises(RunError, match="cannot be resumed"):
        run_training(load_config(run / "config.toml").with_overrides([f"run.resume={run}", "train.max_steps=4"]))
    assert _snapshot(run) == before  # config.toml, metrics and checkpoints as they were


def test_a_run_has_one_trainer_and_the_second_is_told_who(tmp_path):
    run = run_training(_config(tmp_path, **{"train.max_steps": 1})).run_dir
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from engine.rundir import RunLock
            with RunLock({str(run)!r}):
                print("held", flush=True)
                sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(rundir.__file__).parent.parent)
    try:
        assert holder.stdout.readline().strip() == "held"
        metrics_before = (run / "metrics.jsonl").read_bytes()
        with pytest.raises(RunBusy, match=rf"run {run} is in use by process {holder.pid} on .*, since .*; stop that trainer first"):
            run_training(load_config(run / "config.toml").with_overrides([f"run.resume={run}", "train.max_steps=2"]))
        assert (run / "metrics.jsonl").read_bytes() == metrics_before
    finally:
        holder.communicate("", timeout=30)
    resumed = run_training(load_config(run / "config.toml").with_overrides([f"run.resume={run}", "train.max_steps=2"]))
    assert resumed.status == "finished" and resumed.step == 2  # the lock went with its holder


def test_a_new_run_cleans_what_killed_saves_left_beside_it(tmp_path):
    root = tmp_path / "runs"
    kept = run_training(_config(root, **{"train.max_steps": 1, "run.name": "kept"})).run_dir
    leftover = kept / "checkpoints" / ".tmp-step-00000002-99999"  # a save killed mid-way
    leftover.mkdir()
    (leftover / "model.pth").write_bytes(b"partial")
    with pytest.raises(Killed):  # killed during its first save: no checkpoint, a temporary folder
        run_training(_config(root, **{"train.max_steps": 5, "run.name": "orphan"}), on_metrics=_killed_at(1))
    (orphan,) = [p for p in root.iterdir() if p.name.endswith("-orphan")]
    (orphan / "checkpoints" / ".tmp-step-00000001-99999").mkdir(parents=True)
    mine = root / "20260101-000000-mine"  # a folder with the user's own files in it is never removed
    mine.mkdir()
    (mine / "config.toml").write_text("")
    (mine / "notes.txt").write_text("keep me")

    fresh = run_training(_config(root, **{"train.max_steps": 1, "run.name": "fresh"}))
    assert not leftover.exists() and rundir.latest_checkpoint(kept).name == "step-00000001"
    assert not orphan.exists() and (mine / "notes.txt").exists()
    notes = [r.message for r in read_metrics(fresh.run_dir) if r.kind == "status" and r.state == "note"]
    assert any(f"removed run folder {orphan}" in n for n in notes) and any("unfinished save" in n for n in notes)


def test_steps_redone_after_a_kill_are_dropped_by_every_reader(tmp_path):
    with pytest.raises(Killed):  # checkpoint at 2, killed after step 3 was logged
        run_training(_config(tmp_path / "runs", **{"train.max_steps": 10, "run.checkpoint_every": 2}), on_metrics=_killed_at(3))
    (run,) = (tmp_path / "runs").iterdir()
    tail = MetricsTail(run)
    tail.poll()
    drawn = [(r.step, r.loss) for r in tail.drain() if r.kind == "train"]
    assert [s for s, _ in drawn] == [1, 2, 3]
    resumed = run_training(resolve_config(None, None, [], resume="auto", run_root=tmp_path / "runs", max_steps=4))
    assert resumed.step == 4
    raw = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
           if json.loads(line)["kind"] == "train"]
    assert raw == [1, 2, 3, 3, 4]  # the file keeps history; readers drop the re-done step 3
    assert [r.step for r in read_metrics(run) if r.kind == "train"] == [1, 2, 3, 4]
    tail.poll()
    later = tail.drain()
    assert later[0].resumed_at == 2 and [r.step for r in later if r.kind == "train"] == [3, 4]


def test_the_tail_drops_redone_records_still_pending():
    lines = [{"kind": "train", "step": s, "loss": 1.0} for s in (1, 2, 3)]
    lines += [{"kind": "status", "step": 2, "state": "resumed"}, {"kind": "train", "step": 3, "loss": 0.5}]
    records = [parse_record(x) for x in lines]
    assert [(r.kind, r.step) for r in rundir.drop_redone(records)] == [
        ("train", 1), ("train", 2), ("status", 2), ("train", 3)]
    assert parse_record({"kind": "train"}) is None and parse_record([1]) is None


def test_a_store_without_validation_pieces_is_said_before_training(tmp_path):
    """Issue 18 item 15: a store with 0 validation samples trained without a word."""
    from engine.data.store import PrepareConfig, prepare
    from engine.paths import CORPUS_DIR

    midi = tmp_path / "one"
    midi.mkdir()
    (midi / "piece.mid").write_bytes((CORPUS_DIR / "piano" / "schoenberg_op19_no2.mid").read_bytes())
    prepare(midi, tmp_path / "store", PrepareConfig(val_fraction=0.0, workers=1))
    overrides = micro_overrides(tmp_path / "store", tmp_path / "runs", **{"train.max_steps": 1, "eval.val_every": 1})
    result = run_training(load_config(preset="tiny", overrides=overrides))
    notes = [r.message for r in read_metrics(result.run_dir) if r.kind == "status" and r.state == "note"]
    assert result.status == "finished" and any("no validation samples" in n for n in notes), notes

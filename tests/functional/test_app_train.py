"""Train pane against the real trainer: a tiny run started from the pane, stopped (saving), and a
run written by a separate ``--headless train`` process that the pane attaches to."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from app_helpers import FAST_TINY, wait_for
from pianomuse_tui.requests import TrainArgs
from engine.train.request import TrainRequest
from pianomuse_tui.app import ConfirmScreen, PianoMuseApp
from pianomuse_tui.messages import MetricsArrived, RunEnded, RunStarted
from pianomuse_tui.widgets.loss_plot import LossPlot

pytestmark = pytest.mark.asyncio


@pytest.mark.slow
async def test_tiny_run_from_the_pane_streams_metrics_stops_saving_resumes_and_quits_cleanly(tmp_path):
    seen: list = []
    args = TrainArgs(TrainRequest(preset="tiny", run_root=str(tmp_path), max_steps=400, overrides=FAST_TINY))
    app = PianoMuseApp(pane="train", args=args)
    async with app.run_test(size=(140, 40), message_hook=seen.append) as pilot:
        pane = app.train
        plot = pane.query_one(LossPlot)
        assert await wait_for(pilot, lambda: len(plot.train_points) >= 4, 150, 0.2), pane.proc.log_tail()
        started = next(m for m in seen if isinstance(m, RunStarted))
        run_dir = started.run_dir
        assert run_dir.parent == tmp_path and not started.attached
        assert any(isinstance(m, MetricsArrived) for m in seen)
        now = str(pane.query_one("#tr-now").render())
        assert "loss " in now and "tok/s" in now and "/ 400" in now and "lr " in now and "grad " in now
        import re

        assert re.search(r"ETA \d+:\d\d", now), now  # from the trainer's elapsed time and max_steps
        assert plot.val_points or await wait_for(pilot, lambda: bool(plot.val_points), 60, 0.2)

        # Ctrl+Q while our run trains asks first; "no" keeps everything going
        await pilot.press("ctrl+q")
        await pilot.pause(0.2)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await pilot.pause(0.1)
        assert app.is_running and pane.owns_active_run

        # x asks the run to save and exit at the next step boundary
        pane.focus_main()
        await pilot.press("x")
        assert await wait_for(pilot, lambda: any(isinstance(m, RunEnded) for m in seen), 90, 0.2)
        ended = next(m for m in seen if isinstance(m, RunEnded))
        assert ended.error is None and ended.exit_code == 130
        status = str(pane.query_one("#tr-status").render())
        assert status.startswith("run stopped and saved") and "exit 130" not in status  # not a crash
        saved = sorted((run_dir / "checkpoints").glob("step-*/model.pth"))
        assert saved, "stopping must leave a checkpoint"
        first_proc = pane.proc
        assert not pane.owns_active_run and not first_proc.alive
        last_step = max(s for s, _ in plot.train_points)
        table = pane.query_one("#tr-ckpts")
        assert table.row_count >= 1

        # r resumes the newest run: same directory, the whole history is read back, steps continue
        await pilot.press("r")
        assert await wait_for(pilot, lambda: pane.tail is not None and plot.train_points
                              and max(s for s, _ in plot.train_points) > last_step, 150, 0.2), pane.proc.log_tail()
        assert pane.proc is not first_proc and pane.run_dir == run_dir

        # Ctrl+Q, "yes": the run saves and stops, the app exits, no process is left
        proc = pane.proc
        await pilot.press("ctrl+q")
        await pilot.pause(0.2)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        assert await wait_for(pilot, lambda: not app.is_running, 90, 0.2)
    assert not proc.alive and proc.exit_code == 130


@pytest.mark.slow
async def test_attach_to_a_run_written_by_a_headless_process(tmp_path):
    cmd = [sys.executable, "-m", "pianomuse_tui.cli", "--headless", "train", "--preset", "tiny",
           "--run-dir", str(tmp_path), "--max-steps", "400"] + [f"--{o}" for o in FAST_TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 150
        while not list(tmp_path.glob("*/metrics.jsonl")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        run_dir = next(tmp_path.glob("*/metrics.jsonl")).parent
        seen: list = []
        app = PianoMuseApp(pane="train")
        async with app.run_test(size=(140, 40), message_hook=seen.append) as pilot:
            await pilot.pause(0.2)
            pane = app.train
            pane.query_one("#tr-runs").value = str(run_dir)
            pane.focus_main()
            await pilot.press("a")
            plot = pane.query_one(LossPlot)
            assert await wait_for(pilot, lambda: len(plot.train_points) >= 3, 150, 0.2)
            assert any(isinstance(m, RunStarted) and m.attached and m.run_dir == run_dir for m in seen)
            count = len(plot.train_points)
            assert await wait_for(pilot, lambda: len(plot.train_points) > count, 60, 0.2), "the tail follows new lines"
            assert "attached to" in str(pane.query_one("#tr-status").render())
            # someone else's run: quitting does not ask, and does not stop it
            await pilot.press("ctrl+q")
            await pilot.pause(0.3)
            assert not app.is_running
        assert proc.poll() is None
    finally:
        for run in tmp_path.glob("*/metrics.jsonl"):
            (run.parent / "control").mkdir(exist_ok=True)
            (run.parent / "control" / "stop").touch()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
async def test_recorded_run_shows_validation_bits_per_note_and_audition_scores(tmp_path):
    """A finished run's folder: the pane shows the validation bits/note, the weight average's
    validation loss, and each audition's score."""
    import json
    import shutil

    from textual.widgets import DataTable

    from engine.paths import CORPUS_DIR

    run_dir = tmp_path / "20261130-1200-tiny"
    (run_dir / "auditions").mkdir(parents=True)
    shutil.copy(next(iter(sorted(CORPUS_DIR.rglob("*.mid")))), run_dir / "auditions" / "step-00000010.mid")
    records = [{"kind": "train", "step": s, "tokens": 256 * s, "time": 0.0, "loss": 5.0 - 0.2 * s, "lr": 1e-3}
               for s in range(1, 11)]
    records.append({"kind": "val", "step": 10, "tokens": 2560, "time": 0.0, "val_loss": 3.21, "bits_per_note": 7.77,
                    "ema_val_loss": 3.19, "ema_bits_per_note": 7.70})
    records.append({"kind": "audition", "step": 10, "tokens": 2560, "time": 0.0, "notes": 40,
                    "path": str(run_dir / "auditions" / "step-00000010.mid"), "pitch_class_oa": 0.91, "copied_notes": 7, "self_reuse": 0.18})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    app = PianoMuseApp(pane="train")
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.pause(0.2)
        pane = app.train
        pane.query_one("#tr-runs").value = str(run_dir)
        pane.focus_main()
        await pilot.press("a")
        table = pane.query_one("#tr-ckpts", DataTable)
        assert await wait_for(pilot, lambda: table.row_count >= 1, 30, 0.1)
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        assert ["audition ▶", "10", "", "pc OA 0.91, copy 7, reuse 0.18", "step-00000010.mid"] in rows, rows
        assert await wait_for(pilot, lambda: "bits/note 7.77" in str(pane.query_one("#tr-now").render()), 30, 0.1)
        assert "val of the weight average (EMA) 3.1900" in str(pane.query_one("#tr-now").render())


async def test_the_run_folder_is_read_off_the_ui_thread_and_new_checkpoints_are_listed(tmp_path, monkeypatch):
    """The config and the checkpoint/audition listing come from the run watcher's thread, as
    RunFilesRead messages; a checkpoint logged later appears in the table the same way."""
    import json
    import threading
    from pathlib import Path

    from textual.widgets import DataTable

    from pianomuse_tui.panes.train import RunFilesRead

    run_dir = tmp_path / "20261130-1300-tiny"
    (run_dir / "checkpoints" / "step-00000002").mkdir(parents=True)
    for name in ("model.pth", "model.json", "trainer.pt"):  # listed once all three are there
        (run_dir / "checkpoints" / "step-00000002" / name).write_bytes(b"")
    (run_dir / "config.toml").write_text('preset = "tiny"\n[model]\nn_layer = 1\nn_embd = 64\narch = "x070"\n'
                                         "[train]\nmax_steps = 50\n")
    log = run_dir / "metrics.jsonl"
    log.write_text("".join(json.dumps({"kind": "train", "step": s, "tokens": 64 * s, "time": 0.0, "loss": 4.0})
                           + "\n" for s in (1, 2)))

    # every read of the run folder's files and every listing of it, with the thread that made it
    reads: list[tuple[str, threading.Thread]] = []
    for name in ("read_text", "iterdir", "glob"):
        real = getattr(Path, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):
            if run_dir in self.parents or self == run_dir:
                reads.append((_name, threading.current_thread()))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(Path, name, spy)

    seen: list = []
    app = PianoMuseApp(pane="train", args=TrainArgs(attach=str(run_dir)))
    async with app.run_test(size=(140, 40), message_hook=seen.append) as pilot:
        pane = app.train
        table = pane.query_one("#tr-ckpts", DataTable)
        assert await wait_for(pilot, lambda: table.row_count == 1 and pane.records_seen == 2, 30, 0.1)
        assert "preset tiny (L1 D64 x070)" in str(pane.query_one("#tr-status").render())
        assert "step 2 / 50" in str(pane.query_one("#tr-now").render())

        (run_dir / "checkpoints" / "step-00000004").mkdir()
        for name in ("model.pth", "model.json", "trainer.pt"):
            (run_dir / "checkpoints" / "step-00000004" / name).write_bytes(b"")
        with log.open("a") as fh:
            fh.write(json.dumps({"kind": "checkpoint", "step": 4, "tokens": 256, "time": 0.0,
                                 "path": str(run_dir / "checkpoints" / "step-00000004")}) + "\n")
        assert await wait_for(pilot, lambda: table.row_count == 2, 30, 0.1)
        assert [str(table.get_row_at(i)[4]) for i in range(2)] == ["step-00000004", "step-00000002"]
        pane.workers_cancel()
    assert sum(isinstance(m, RunFilesRead) for m in seen) >= 2
    assert {name for name, _ in reads} >= {"read_text", "iterdir"}
    assert not [name for name, thread in reads if thread is threading.main_thread()], reads


@pytest.mark.slow
async def test_start_attach_and_stop_keys_leave_the_disk_to_workers(tmp_path, monkeypatch):
    """n (with a config file that is not there), a (on a runs folder) and x (on the attached run)
    answer on screen, while every look at the disk (path checks, listing the runs folder, creating
    control/stop) happens in worker threads."""
    import json
    import threading
    from pathlib import Path

    from pianomuse_tui.messages import RunLaunched

    runs = tmp_path / "runs"
    older, newer = runs / "20261130-0900-tiny", runs / "20261130-1000-tiny"
    for run, loss in ((older, 5.0), (newer, 4.0)):
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "tokens": 64, "time": 0.0,
                                                       "loss": loss}) + "\n")
    import os

    os.utime(older, (1_000_000, 1_000_000))  # the newer run is the newest by modification time

    touched: list[tuple[str, str, threading.Thread]] = []
    for name in ("stat", "iterdir", "mkdir", "touch", "glob", "read_text"):
        real = getattr(Path, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):
            if str(self).startswith(str(tmp_path)):
                touched.append((_name, str(self), threading.current_thread()))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(Path, name, spy)

    seen: list = []
    app = PianoMuseApp(pane="train")
    async with app.run_test(size=(140, 40), message_hook=seen.append) as pilot:
        await pilot.pause(0.2)
        pane = app.train
        pane.query_one("#tr-config").value = str(tmp_path / "missing.toml")
        pane.query_one("#tr-runs").value = str(runs)
        pane.focus_main()
        await pilot.press("n")
        assert await wait_for(pilot, lambda: any(isinstance(m, RunLaunched) for m in seen), 30, 0.05)
        refused = next(m for m in seen if isinstance(m, RunLaunched))
        assert refused.process is None and "missing.toml does not exist" in refused.error
        assert any("missing.toml does not exist" in n.message for n in app._notifications)
        assert pane.proc is None and not pane.owns_active_run

        pane.query_one("#tr-config").value = ""
        await pilot.press("a")
        assert await wait_for(pilot, lambda: any(isinstance(m, RunStarted) for m in seen)
                              and pane.records_seen == 1, 30, 0.05)
        assert next(m for m in seen if isinstance(m, RunStarted)).run_dir == newer

        await pilot.press("x")
        assert await wait_for(pilot, lambda: os.path.exists(newer / "control" / "stop"), 30, 0.05)
        assert "asked 20261130-1000-tiny to save and stop" in str(pane.query_one("#tr-status").render())
        pane.workers_cancel()
    assert {name for name, _, _ in touched} >= {"stat", "iterdir", "mkdir", "touch"}
    on_ui = [(name, path) for name, path, thread in touched if thread is threading.main_thread()]
    assert not on_ui, on_ui


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda_visible(), reason="asking for CUDA only fails where no CUDA GPU is visible")
@pytest.mark.slow
async def test_no_gpu_and_a_crashed_training_process_are_one_sentence_and_the_app_goes_on(tmp_path):
    import os
    import signal

    seen: list = []
    overrides = " ".join(FAST_TINY)
    app = PianoMuseApp(pane="train")
    async with app.run_test(size=(140, 40), message_hook=seen.append) as pilot:
        pane = app.train
        ended = lambda: list({id(m): m for m in seen if isinstance(m, RunEnded)}.values())  # noqa: E731
        pane.query_one("#tr-preset").value = "tiny"
        pane.query_one("#tr-runs").value = str(tmp_path)
        pane.query_one("#tr-overrides").value = overrides + " train.device=cuda"
        pane.focus_main()
        await pilot.press("n")
        # the trainer's own sentence comes back from the spawned process
        assert await wait_for(pilot, lambda: len(ended()) == 1, 90, 0.1)
        error = ended()[0].error
        assert error and "CUDA" in error and "--device cpu" in error and "\n" not in error
        # the hook sees RunEnded as it is posted: the pane's notification follows it through the queue
        assert await wait_for(pilot, lambda: any(n.message == error for n in app._notifications), 10, 0.05)
        assert str(pane.query_one("#tr-status").render()) == f"run failed: {error}"
        assert app.is_running and not pane.owns_active_run

        # a training process that dies without a word (killed) is reported with its log's path
        pane.query_one("#tr-overrides").value = overrides
        await pilot.press("n")
        assert await wait_for(pilot, lambda: pane.proc is not None and pane.proc.alive, 30, 0.05)
        os.kill(pane.proc.pid, signal.SIGKILL)
        assert await wait_for(pilot, lambda: len(ended()) == 2, 30, 0.1)
        error = ended()[1].error
        assert "exited with code -9" in error and str(pane.proc.log_path) in error
        assert await wait_for(pilot, lambda: any(n.message == error for n in app._notifications), 10, 0.05)
        assert app.is_running and not pane.owns_active_run


async def test_the_cli_and_the_pane_send_the_same_training_request(tmp_path, monkeypatch):
    """`train` on a terminal hands the pane a TrainRequest; what the pane would launch from its fields
    resolves to the TrainConfig the headless run of the same command resolves to."""
    from typer.testing import CliRunner

    import pianomuse_tui.cli as cli

    opened = []
    monkeypatch.setattr(cli, "wants_app", lambda ctx: True)
    monkeypatch.setattr(cli, "open_app", lambda pane, args: opened.append((pane, args)))
    words = ["train", "--data", str(tmp_path / "midi"), "--run-dir", str(tmp_path / "runs"), "--max-steps", "7",
             "--device", "cpu", "--optim.lr", "3e-4", "--train.batch_size", "4"]
    result = CliRunner().invoke(cli.app, words)
    assert result.exit_code == 0, result.output
    (pane_name, args), = opened
    assert pane_name == "train" and isinstance(args, TrainArgs)
    assert args.request == TrainRequest(data=str(tmp_path / "midi"), run_root=str(tmp_path / "runs"), max_steps=7,
                                        device="cpu", overrides=["optim.lr=3e-4", "train.batch_size=4"])
    app = PianoMuseApp(pane="train", args=args)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.pause(0.2)
        from_pane = app.train._spec()
        assert app.train.proc is None  # no preset or config given: nothing starts by itself
    assert from_pane.resolve().to_dict() == args.request.resolve().to_dict()
    assert from_pane.resolve().train.max_steps == 7 and from_pane.resolve().optim.lr == 3e-4

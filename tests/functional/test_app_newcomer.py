"""What a newcomer hits first in the app: play from anywhere in the Generate pane, a machine with no
MIDI system (what the pane offers instead, and errors that stay readable), and the quit dialog."""
from __future__ import annotations

import os

import mido
import pytest
from textual.widgets import Select, Static

from app_helpers import screen_text, wait_for
from pianomuse_tui.requests import TrainArgs
from pianomuse_tui.app import ConfirmScreen, PianoMuseApp
from pianomuse_tui.messages import PerformanceEnded, PortsListed, TakeWritten
from pianomuse_tui.requests import GenerateArgs

pytestmark = pytest.mark.asyncio

NO_MIDI_SYSTEM = not os.path.exists("/dev/snd/seq")


@pytest.fixture
def no_jack(monkeypatch):
    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"pianomuse-no-such-server-{os.getpid()}")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")


def _ended(seen: list) -> list[PerformanceEnded]:
    return list({id(m): m for m in seen if isinstance(m, PerformanceEnded)}.values())


@pytest.mark.skipif(not NO_MIDI_SYSTEM, reason="this machine has an ALSA sequencer")
@pytest.mark.slow
async def test_no_midi_system_space_after_a_dropdown_and_w_writes_the_take(no_jack, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen: list = []
    app = PianoMuseApp(pane="generate", args=GenerateArgs(bars=1, seed=3))
    async with app.run_test(size=(140, 40), message_hook=seen.append) as pilot:
        pane = app.generate
        assert await wait_for(pilot, lambda: any(isinstance(m, PortsListed) for m in seen), 60)
        select = pane.query_one("#gen-port", Select)
        await pilot.pause(0.5)  # the pane has focused its Play button by now
        select.focus()
        await pilot.pause(0.1)
        assert app.screen.active_bindings["space"].binding.action == "toggle_play"  # the footer keeps it
        await pilot.press("enter", "down", "enter")  # choose the next output in the dropdown
        await pilot.pause(0.2)
        assert not select.expanded and app.screen.focused is select
        await pilot.press("space")  # plays, instead of opening the dropdown again
        assert await wait_for(pilot, lambda: _ended(seen), 60)
        assert not select.expanded

        select.value = "__virtual__"
        await pilot.press("space")
        assert await wait_for(pilot, lambda: len(_ended(seen)) == 2, 60)
        ended = _ended(seen)[-1]
        assert ended.output_failed and "No MIDI system is available" in ended.error
        line = str(pane.query_one("#gen-message", Static).render())
        # the error stays on the pane after its toast, with what the app can do instead
        assert "No MIDI system is available" in line and "press w to write the take" in line
        assert "--out" not in line and "makes no sound" in line
        await pilot.press("w")
        assert await wait_for(pilot, lambda: any(isinstance(m, TakeWritten) for m in seen), 120)
        written = next(m for m in seen if isinstance(m, TakeWritten))
        assert written.error is None
        (take,) = written.paths
        assert take.parent.name == "takes" and take.exists()
        assert any(msg.type == "note_on" for msg in mido.MidiFile(take))


async def test_the_quit_dialog_shows_its_keys_and_enter_keeps_going(monkeypatch):
    app = PianoMuseApp(pane="generate")
    async with app.run_test(size=(100, 30)) as pilot:
        monkeypatch.setattr(app, "busy_activities", lambda: ["a training run"])
        await pilot.press("ctrl+q")
        assert await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 10)
        shown = screen_text(app)
        assert "Stop and quit (y)" in shown and "Keep going (n, enter)" in shown
        assert "y: stop and quit" in shown and "n, esc or enter: keep going" in shown
        await pilot.press("enter")  # the safe default
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmScreen) and app.is_running
        await pilot.press("ctrl+q")
        assert await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 10)
        monkeypatch.setattr(app, "busy_activities", lambda: [])
        await pilot.press("y")
        assert await wait_for(pilot, lambda: not app.is_running, 20)


def _recorded_resumed_run(root):
    """A run stopped at step 100 and resumed: elapsed_s starts again at 0 while steps go on."""
    import json
    import shutil

    from engine.paths import CORPUS_DIR

    run = root / "20261206-0700-tiny"
    (run / "checkpoints" / "step-00000100").mkdir(parents=True)
    for name in ("model.pth", "model.json", "trainer.pt"):  # a complete checkpoint, as listings require
        (run / "checkpoints" / "step-00000100" / name).write_bytes(b"")
    (run / "auditions").mkdir()
    shutil.copy(sorted(CORPUS_DIR.rglob("*.mid"))[0], run / "auditions" / "step-00000100.mid")
    (run / "config.toml").write_text('preset = "tiny"\n[model]\nn_layer = 2\nn_embd = 128\narch = "x070"\n'
                                     '[train]\nmax_steps = 200\n')
    records = [{"kind": "status", "state": "started", "step": 0, "elapsed_s": 0.0, "max_steps": 200}]
    records += [{"kind": "train", "step": s, "elapsed_s": s * 1.0, "loss": 3.0, "tokens": s * 100}
                for s in range(10, 101, 10)]
    records += [{"kind": "val", "step": 100, "elapsed_s": 100.5, "val_loss": 2.5},
                {"kind": "audition", "step": 100, "elapsed_s": 101.0, "path": str(run / "auditions" / "step-00000100.mid"),
                 "pitch_class_oa": 0.81, "copied_notes": 4},
                {"kind": "status", "state": "stopped", "step": 100, "elapsed_s": 102.0},
                {"kind": "status", "state": "resumed", "step": 100, "elapsed_s": 0.5, "max_steps": 200},
                {"kind": "train", "step": 110, "elapsed_s": 10.5, "loss": 2.9, "tokens": 11000},
                {"kind": "train", "step": 120, "elapsed_s": 20.5, "loss": 2.8, "tokens": 12000}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


async def test_a_resumed_runs_eta_the_checkpoint_table_and_the_cpu_memory_panel(tmp_path):
    from textual.widgets import DataTable

    run = _recorded_resumed_run(tmp_path)
    app = PianoMuseApp(pane="train", args=TrainArgs(attach=str(run)))
    async with app.run_test(size=(140, 40)) as pilot:
        pane = app.train
        table = pane.query_one("#tr-ckpts", DataTable)
        assert await wait_for(pilot, lambda: table.row_count == 2, 30)
        now = str(pane.query_one("#tr-now").render())
        # 1 s per step since the resume, 80 steps to go: 1:20 (elapsed/step from step 0 said 0:14)
        assert "ETA 1:20" in now, now
        labels = [str(column.label) for column in table.columns.values()]
        assert labels == ["item", "step", "val loss", "audition score", "file"]
        rows = {table.get_row_at(i)[0]: table.get_row_at(i) for i in range(table.row_count)}
        assert rows["checkpoint"][2] == "2.500" and rows["checkpoint"][3] == ""
        assert rows["audition ▶"][2] == "" and "pc OA 0.81" in str(rows["audition ▶"][3])
        pane.query_one("#tr-new").focus()
        await pilot.press("c")  # the table in one key, not 5-7 tabs
        assert app.screen.focused is table
        meter = pane.query_one("#tr-mem")
        # on a CPU the memory panel shows the RAM of the app and its run against the machine's
        assert await wait_for(pilot, lambda: "GiB" in str(meter.render()), 20)  # the machine's first sample
        shown = str(meter.render())
        assert " of " in shown and "alloc -" not in shown and "░" in shown and "·" not in shown  # a real bar

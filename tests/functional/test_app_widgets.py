"""The Train pane's memory readout (trainer numbers, and NVML from a scripted GPU: no GPU can exist
here), the loss plot's log scale and smoothing keys, and the piano roll's buffered notes."""
from __future__ import annotations

import json
import sys
import types

import pytest

from app_helpers import wait_for
from pianomuse_tui import resources
from pianomuse_tui.requests import TrainArgs
from pianomuse_tui.app import PianoMuseApp
from pianomuse_tui.widgets.loss_plot import LossPlot
from pianomuse_tui.widgets.piano_roll import RollNote, render_piano_roll

GIB = 1024**3


@pytest.fixture
def scripted_nvml(monkeypatch):
    """A pynvml that answers like one H200 at 97% (the real one needs an NVIDIA driver and GPU)."""
    nvml = types.ModuleType("pynvml")
    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetCount = lambda: 1
    nvml.nvmlDeviceGetHandleByIndex = lambda index: ("gpu", index)
    nvml.nvmlDeviceGetUtilizationRates = lambda handle: types.SimpleNamespace(gpu=97, memory=60)
    nvml.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(used=70 * GIB, total=140 * GIB,
                                                                         free=70 * GIB)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    resources._nvml.cache_clear()
    yield nvml
    resources._nvml.cache_clear()


@pytest.mark.asyncio
@pytest.mark.slow
async def test_memory_panel_shows_trainer_memory_and_nvml_and_plot_keys_redraw(tmp_path, scripted_nvml):
    run = tmp_path / "20261130-0915-small"
    run.mkdir()
    records = [{"kind": "train", "step": s, "tokens": 512 * s, "time": 0.0, "loss": 4.0 / s, "lr": 6e-4,
                "grad_norm": 0.41, "tokens_per_s": 312000.0, "mem_alloc": 9.1 * GIB,
                "mem_reserved": 11.0 * GIB, "mem_peak": 12.3 * GIB} for s in range(1, 41)]
    records.append({"kind": "val", "step": 40, "tokens": 20480, "time": 0.0, "val_loss": 0.2})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    app = PianoMuseApp(pane="train", args=TrainArgs(attach=str(run)))
    async with app.run_test(size=(140, 40)) as pilot:
        pane = app.train
        meter = pane.query_one("#tr-mem")
        assert await wait_for(pilot, lambda: pane.records_seen == 41 and meter.machine.gpu_util is not None,
                              30, 0.05)
        memory = str(meter.render())
        assert "alloc 9.10 GiB" in memory and "reserved 11.0 GiB  peak 12.3 GiB" in memory
        assert "GPU 97%" in memory and "70.0 GiB/140.0 GiB" in memory and "NVML" in memory
        assert "process RAM" in memory  # the app's and the run's resident memory, from psutil
        now = str(pane.query_one("#tr-now").render())
        assert "lr 6.00e-04" in now and "grad 0.4100" in now and "312.0k tok/s" in now

        plot = pane.query_one(LossPlot)
        linear = str(plot.render())
        pane.focus_main()
        await pilot.press("l")
        await pilot.pause(0.1)
        assert plot.log_y and "log y" in plot.border_title
        assert str(plot.render()) != linear  # the curve and the axis labels move
        smoothing = plot.smoothing
        await pilot.press("e")
        await pilot.pause(0.1)
        assert plot.smoothing != smoothing and f"EMA {plot.smoothing:.2f}" in plot.border_title
        pane.workers_cancel()


def test_piano_roll_draws_played_notes_left_of_the_playhead_and_buffered_ones_right():
    played = RollNote(pitch=60, start=0.0, end=0.5)
    buffered = RollNote(pitch=64, start=1.2, end=1.6)  # scheduled, not yet sounding
    text = render_piano_roll([played, buffered], now=1.0, width=45, height=6).plain
    rows = text.split("\n")
    head = rows[0].index("┃")
    assert all(row.index("┃") == head for row in rows)  # one fixed playhead
    played_cells = [(r, c) for r, row in enumerate(rows) for c, ch in enumerate(row) if ch == "█"]
    ahead_cells = [(r, c) for r, row in enumerate(rows) for c, ch in enumerate(row) if ch == "▒"]
    assert played_cells and all(c < head for _, c in played_cells)
    assert ahead_cells and all(c > head for _, c in ahead_cells)
    assert ahead_cells[0][0] < played_cells[0][0]  # the higher note is drawn higher

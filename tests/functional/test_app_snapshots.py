"""Snapshot tests (pytest-textual-snapshot): each pane at 120x36 against a committed SVG.

The panes show real engine results: a real scan of six corpus files (each file's measured CPU
time pinned), the recorded metrics of the
bundled model's training run, the bundled model in the Generate pane. What differs from machine to
machine is pinned so the SVGs match anywhere: the header's device and the RAM readout (the real
readouts are checked in test_app_panes.py), paths (each test runs from a fixed working directory
and shows paths relative to it), and notifications (the MIDI port probe warns or not, per machine).

Update after an intended UI change: ``.venv/bin/python -m pytest tests/functional/test_app_snapshots.py
--snapshot-update``, then look at the SVGs under ``__snapshots__/`` before committing them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app_helpers import wait_for
from engine.paths import CORPUS_DIR, MODELS_DIR, REPO_ROOT
from pianomuse_tui import resources
from pianomuse_tui.app import PianoMuseApp
from engine.generate.performance import default_checkpoint
from pianomuse_tui.requests import DatasetArgs, GenerateArgs

SIZE = (120, 36)
# a mix of the corpus' two folders, picked once; fixed names keep the table order fixed
SCAN_FILES = ["piano/bach_bwv846_prelude.mid", "piano/joplin_maple_leaf_rag.mid",
              "piano/mozart_k545_mvt1_exposition.mid", "piano/schoenberg_op19_no2.mid",
              "chorales/bwv101_7.mid", "chorales/bwv104_6.mid"]
BUNDLED = "pianomuse-v8-small"


@pytest.fixture
def fixed_machine(monkeypatch):
    """The same header and RAM line on every machine."""
    monkeypatch.setattr(resources, "device_label", lambda: "CPU: 8 cores")
    monkeypatch.setattr(resources, "sample", lambda pids=None: {
        "gpu_util": None, "gpu_mem_used": None, "gpu_mem_total": None,
        "ram_rss": 1.25 * 1024**3, "source": "psutil"})


async def _settle(pilot, ready) -> None:
    """Wait for ``ready()``, for every worker, then drop toasts (their text is machine-dependent)."""
    assert await wait_for(pilot, ready, 60, 0.1)
    # the run watcher tails metrics.jsonl until cancelled, and the RAM sampler comes back every second
    busy = lambda: [w for w in pilot.app.workers  # noqa: E731
                    if w.group not in ("train-watch", "resources") and not w.is_finished]
    assert await wait_for(pilot, lambda: not busy(), 60, 0.1), busy()
    await pilot.pause(0.3)
    pilot.app.clear_notifications()
    await pilot.pause(0.1)


@pytest.mark.slow
def test_dataset_pane_after_a_real_scan(snap_compare, fixed_machine, tmp_path, monkeypatch):
    for name in SCAN_FILES:
        (tmp_path / "corpus").mkdir(exist_ok=True)
        shutil.copy(CORPUS_DIR / name, tmp_path / "corpus" / Path(name).name)
    monkeypatch.chdir(tmp_path)
    app = PianoMuseApp(pane="dataset", args=DatasetArgs(folder="corpus"))

    async def scanned(pilot):
        await _settle(pilot, lambda: app.dataset.report is not None and app.device.startswith("CPU"))
        assert app.dataset.rows_shown == len(SCAN_FILES)
        # each file's measured CPU time is the one timing in the detail panel: pinned
        for record in app.dataset.records.values():
            record.stats.cpu_s = 0.0125
        # and the detail is drawn again now that the layout (with its scrollbar) has settled
        await pilot.press("down", "up")
        # the table measures new rows for its column widths when it next idles (a busy machine
        # can delay that past the first settle): wait until the names fit their column
        table = app.query_one("#ds-files")
        widest = max(len(name) for name in app.dataset.names.values())
        await _settle(pilot, lambda: not app.dataset.busy and table.columns["file"].content_width >= widest)

    assert snap_compare(app, terminal_size=SIZE, run_before=scanned)


@pytest.mark.slow
def test_train_pane_attached_to_the_bundled_models_recorded_run(snap_compare, fixed_machine, tmp_path,
                                                                 monkeypatch):
    # the run directory the bundled model was trained in, rebuilt from what ships with it
    run = tmp_path / "runs" / f"{BUNDLED}-run"
    (run / "checkpoints" / "step-00000600").mkdir(parents=True)
    shutil.copy(MODELS_DIR / f"{BUNDLED}.metrics.jsonl", run / "metrics.jsonl")
    shutil.copy(MODELS_DIR / f"{BUNDLED}.train.toml", run / "config.toml")
    (run / "checkpoints" / "step-00000600" / "model.pth").symlink_to(MODELS_DIR / f"{BUNDLED}.pth")
    # a complete checkpoint folder, as run listings require (the trainer state is not read here)
    (run / "checkpoints" / "step-00000600" / "model.json").symlink_to(MODELS_DIR / f"{BUNDLED}.json")
    (run / "checkpoints" / "step-00000600" / "trainer.pt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    app = PianoMuseApp(pane="train")
    records = sum(1 for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip())

    async def attached(pilot):
        app.train.attach(Path("runs") / run.name)
        from pianomuse_tui.widgets.meters import MemoryMeter

        # the machine readout comes every second: wait for it, so the Memory panel is the same every time
        meter = app.train.query_one(MemoryMeter)
        # and for the watcher's reading of the run folder (config and checkpoint listing)
        await _settle(pilot, lambda: app.train.records_seen == records and app.device.startswith("CPU")
                      and meter.machine.ram_rss is not None
                      and app.train.run_files is not None and len(app.train.run_files.checkpoints) == 1)
        app.train.workers_cancel()  # everything is read; the app exits without waiting for a poll

    assert snap_compare(app, terminal_size=SIZE, run_before=attached)


def test_generate_pane_idle_with_the_bundled_model(snap_compare, fixed_machine, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    bundled = default_checkpoint()
    assert bundled is not None and bundled.parent == MODELS_DIR
    # what `pianomuse-tui generate --checkpoint assets/models/...` shows from the project folder
    app = PianoMuseApp(pane="generate", args=GenerateArgs(checkpoint=str(bundled.relative_to(REPO_ROOT))))

    async def idle(pilot):
        await _settle(pilot, lambda: app.generate._ports_listed and app.device.startswith("CPU"))
        assert not app.generate.performing

    assert snap_compare(app, terminal_size=SIZE, run_before=idle)

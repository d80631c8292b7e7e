"""Dataset pane, driven with Pilot against the real engine scan of the bundled corpus."""
from __future__ import annotations

import pytest
from textual.widgets import DataTable, ProgressBar, Static

from app_helpers import wait_for as _wait_for
from engine.paths import CORPUS_DIR
from pianomuse_tui.app import PianoMuseApp
from pianomuse_tui.messages import ScanFinished, ScanProgress
from pianomuse_tui.requests import DatasetArgs

pytestmark = pytest.mark.asyncio


@pytest.mark.slow
async def test_scan_of_bundled_corpus_fills_table_summary_and_detail():
    seen: list = []
    app = PianoMuseApp(pane="dataset")
    async with app.run_test(size=(140, 40), message_hook=seen.append) as pilot:
        await pilot.pause(0.3)
        await pilot.press("s")
        assert await _wait_for(pilot, lambda: any(isinstance(m, ScanFinished) for m in seen), 90)
        await pilot.pause(0.2)
        finished = next(m for m in seen if isinstance(m, ScanFinished))
        assert finished.error is None and not finished.cancelled
        n_files = len(finished.report.files)
        assert n_files > 10
        # the pane's own progress messages (the hook also sees them bubble up through the parents)
        progress = [m for m in seen if isinstance(m, ScanProgress)]
        assert progress and max(m.done for m in progress) == n_files and progress[-1].total == n_files
        # a finished scan shows a full bar and no countdown, however long it ran (this one spans
        # seconds of progress, enough for Textual's ETA to have a speed)
        bar = app.query_one("#ds-progress", ProgressBar)
        assert bar.percentage == 1.0
        assert str(bar.query_one("#eta").render()) == "--:--:--"

        table = app.query_one("#ds-files", DataTable)
        assert table.row_count == n_files
        summary = str(app.query_one("#ds-summary", Static).render())
        assert f"{n_files} files" in summary and " h " in summary and "ok " in summary
        assert " notes" in summary and " tokens" in summary and "warning " in summary and "error " in summary

        # the first row's detail shows its stats and its velocity and pitch histograms, drawn in block
        # characters, straight from the engine's record (no file is read again for the detail)
        detail = str(app.query_one("#ds-detail", Static).render())
        assert "velocity" in detail and "pitch\n" in detail and any(ch in detail for ch in "▁▂▃▄▅▆▇█")

        # clicking a numeric column's header sorts longest first; clicking it again reverses
        def durations() -> list:
            return [table.get_row_at(i)[2].sort_value for i in range(table.row_count)]

        header_x = sum(c.get_render_width(table) for c in list(table.columns.values())[:2]) + 2
        await pilot.click("#ds-files", offset=(header_x, 0))
        await pilot.pause(0.1)
        known = [d for d in durations() if d is not None]
        assert known == sorted(known, reverse=True) and len(set(known)) > 1
        await pilot.click("#ds-files", offset=(header_x, 0))
        await pilot.pause(0.1)
        assert [d for d in durations() if d is not None] == sorted(known)

        # the filter narrows the table to matching paths
        await pilot.press("slash")
        await pilot.press(*"chorales")
        await pilot.pause(0.2)
        assert 0 < table.row_count < n_files


async def test_missing_folder_gives_one_sentence_and_keeps_running(tmp_path):
    app = PianoMuseApp(pane="dataset", args=DatasetArgs(folder=str(tmp_path / "nope"), scan=False))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("s")
        assert await _wait_for(pilot, lambda: any("is not a folder" in n.message for n in app._notifications), 10)
        assert app.is_running


@pytest.mark.slow
async def test_scan_can_be_cancelled(tmp_path):
    # a folder far too large to scan before the cancel lands, even on an idle machine
    files = sorted(CORPUS_DIR.rglob("*.mid"))
    for copy in range(12):
        for f in files:
            (tmp_path / f"{copy:02d}-{f.name}").symlink_to(f)
    seen: list = []
    app = PianoMuseApp(pane="dataset")
    async with app.run_test(size=(140, 40), message_hook=seen.append) as pilot:
        await pilot.pause(0.3)
        app.query_one("#ds-folder").value = str(tmp_path)
        app.dataset.focus_main()
        await pilot.press("s", "escape")
        assert await _wait_for(pilot, lambda: any(isinstance(m, ScanFinished) for m in seen), 60)
        finished = next(m for m in seen if isinstance(m, ScanFinished))
        assert finished.cancelled and finished.report is None
        # the worker posts ScanFinished just before it returns; it counts as finished a moment later
        assert await _wait_for(pilot, lambda: not app.dataset.busy, 10)
        assert app.query_one("#ds-files").row_count == 0
        assert app.query_one("#ds-folder").value == str(tmp_path)


@pytest.mark.slow
async def test_check_arguments_then_prepare_builds_the_store_with_progress_and_offers_it_to_training(tmp_path):
    """What `pianomuse-tui check DIR --policy all --workers 1 --json R` opens: the scan uses them and
    writes the report; then p prepares the token store."""
    import json
    import shutil

    from engine.data.store import TokenStore
    from pianomuse_tui.messages import PrepareFinished, PrepareProgress

    midi = tmp_path / "midi"
    midi.mkdir()
    for f in sorted((CORPUS_DIR / "chorales").glob("*.mid"))[:4]:
        shutil.copy(f, midi / f.name)
    (midi / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01")  # a header cut short
    seen: list = []
    args = DatasetArgs(folder=str(midi), store=str(tmp_path / "store"), report_json=str(tmp_path / "report.json"),
                       workers=1, policy="all")
    app = PianoMuseApp(pane="dataset", args=args)
    async with app.run_test(size=(140, 40), message_hook=seen.append) as pilot:
        assert await _wait_for(pilot, lambda: any(isinstance(m, ScanFinished) for m in seen), 60)
        written = json.loads((tmp_path / "report.json").read_text())
        assert len(written["files"]) == 5 and written["summary"]["piano_policy"] == "all"
        assert written["summary"]["workers"] == 1 and written["summary"]["status"]["error"] == 1
        # the broken file: an error row, counted in the summary with its reason among the top ones
        await pilot.pause(0.2)
        summary = str(app.query_one("#ds-summary", Static).render())
        reason = written["summary"]["reasons"][0]["reason"]
        assert "error 1" in summary and "top reasons:" in summary and f"{reason} (1)" in summary
        table = app.query_one("#ds-files", DataTable)
        assert str(table.get_row_at(0)[0]) == "error"  # errors sort first
        assert str(table.get_row_at(0)[1]) == "broken.mid"
        app.dataset.focus_main()
        await pilot.press("p")
        assert await _wait_for(pilot, lambda: any(isinstance(m, PrepareFinished) for m in seen), 90)
        finished = next(m for m in seen if isinstance(m, PrepareFinished))
        assert finished.error is None and finished.store == tmp_path / "store", finished.error
        progress = [m for m in seen if isinstance(m, PrepareProgress)]
        assert progress and progress[-1].done == progress[-1].total == 5
        assert app.query_one("#ds-progress", ProgressBar).percentage == 1.0
        assert "store ready" in str(app.query_one("#ds-progress-label").render())
        # the Train pane's data field now points at the new store
        assert app.train.query_one("#tr-data").value == str(tmp_path / "store")
    assert len(TokenStore.open(tmp_path / "store").pieces()) == 4


@pytest.mark.slow
async def test_a_cancelled_prepare_keeps_the_files_done_as_the_pane_says(tmp_path):
    """escape during `p`: the pane says the files done are kept, and they are: the next prepare resumes."""
    from engine.data.store import prepare
    from pianomuse_tui.messages import PrepareFinished, PrepareProgress

    midi = tmp_path / "midi"
    midi.mkdir()
    for f in sorted(CORPUS_DIR.rglob("*.mid")):
        (midi / f.name).symlink_to(f)
    store = tmp_path / "store"
    seen: list = []
    app = PianoMuseApp(pane="dataset", args=DatasetArgs(folder=str(midi), store=str(store), workers=1, scan=False))
    async with app.run_test(size=(140, 40), message_hook=seen.append) as pilot:
        await pilot.pause(0.3)
        app.dataset.focus_main()
        await pilot.press("p")
        assert await _wait_for(pilot, lambda: any(isinstance(m, PrepareProgress) and m.done >= 3 for m in seen), 120)
        await pilot.press("escape")
        assert await _wait_for(pilot, lambda: any(isinstance(m, PrepareFinished) for m in seen), 60)
        finished = next(m for m in seen if isinstance(m, PrepareFinished))
        assert finished.cancelled
        label = str(app.query_one("#ds-progress-label").render())
        assert "files done so far are kept" in label
    kept = len(list((store / "pending").glob("*.npz")))
    total = len(list(midi.iterdir()))
    assert 3 <= kept < total and not (store / "index.json").exists()
    again = prepare(midi, store, {"workers": 1})
    assert again.resumed == kept and again.reused == 0 and again.tokenized <= total - kept and again.pieces > 0


def _strings_only_file(path):
    """A real MIDI file of one string-ensemble track (GM 48): no piano, no keyboard."""
    import mido

    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack([mido.Message("program_change", program=48, channel=0, time=0)])
    for i, pitch in enumerate([60, 64, 67, 72] * 4):
        track.append(mido.Message("note_on", note=pitch, velocity=70, channel=0, time=0 if i == 0 else 240))
        track.append(mido.Message("note_off", note=pitch, velocity=0, channel=0, time=240))
    mid.tracks.append(track)
    mid.save(str(path))


async def test_the_policy_chosen_in_the_toolbar_is_the_one_the_scan_uses(tmp_path):
    from textual.widgets import Select

    _strings_only_file(tmp_path / "strings.mid")
    seen: list = []
    app = PianoMuseApp(pane="dataset", args=DatasetArgs(folder=str(tmp_path), scan=False))
    async with app.run_test(size=(140, 40), message_hook=seen.append) as pilot:
        await pilot.pause(0.3)
        select = app.query_one("#ds-policy", Select)
        assert select.value == "auto"  # the default: piano tracks, else every pitched track
        for policy, status in (("auto", "warning"), ("keyboard", "error"), ("all", "ok")):
            seen.clear()
            select.value = policy
            await pilot.pause(0.1)
            await pilot.press("s")
            assert await _wait_for(pilot, lambda: any(isinstance(m, ScanFinished) for m in seen), 60)
            finished = next(m for m in seen if isinstance(m, ScanFinished))
            assert finished.error is None, finished.error
            assert finished.report.summary.piano_policy == policy
            assert finished.report.files[0].status == status, (policy, finished.report.files[0].reasons)

"""Generate pane: a real (tiny, random-weight) checkpoint played live to a real JACK port."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from jack_server import JackServer, MidiReceiver, sounding_after, tiny_checkpoint  # noqa: F401 (fixture)

from app_helpers import wait_for
from engine.generate.defaults import KnobSettings
from pianomuse_tui.app import PianoMuseApp
from pianomuse_tui.messages import PerformanceEnded, PerformanceStarted, PortsListed
from pianomuse_tui.requests import GenerateArgs
from pianomuse_tui.widgets.piano_roll import PianoRoll

pytestmark = [pytest.mark.asyncio, pytest.mark.jack]


def _all_notes_off(messages) -> int:
    return sum(1 for m in messages if m[0] & 0xF0 == 0xB0 and m[1] == 123)


def _ended(seen: list) -> list:
    """PerformanceEnded messages, each once (the hook sees one per widget it bubbles through)."""
    return list({id(m): m for m in seen if isinstance(m, PerformanceEnded)}.values())


def _jack_args(checkpoint, **knobs) -> GenerateArgs:
    """Command-line arguments that open the Generate pane on the test receiver, 64 bars (never ends first)."""
    return GenerateArgs(**{"checkpoint": str(checkpoint), "midi_api": "jack", "port": "pm-test-recv", "bars": 64,
                           "temperature": 1.0, **knobs})


def _note_ons(receiver) -> int:
    return len([m for _, m in receiver.received() if m[0] & 0xF0 == 0x90 and m[2]])


async def _pane_on_the_receiver(pilot, app, seen: list):
    """The Generate pane, focused, once its port list (probed when it shows) has picked the test receiver."""
    pane = app.generate
    assert await wait_for(pilot, lambda: any(isinstance(m, PortsListed) for m in seen), 30)
    await pilot.pause(0.2)
    assert "pm-test-recv" in str(pane.query_one("#gen-port").value)
    pane.focus_main()
    return pane


def _recorded_run_with_an_audition(folder: Path) -> Path:
    """A run folder as the trainer leaves it after an audition (a real corpus piece stands in)."""
    import json
    import shutil

    from engine.paths import CORPUS_DIR

    run = folder / "runs" / "20261130-1200-tiny"
    (run / "auditions").mkdir(parents=True)
    audition = run / "auditions" / "step-00000010.mid"
    shutil.copy(sorted(CORPUS_DIR.rglob("*.mid"))[0], audition)
    records = [{"kind": "train", "step": 10, "tokens": 640, "time": 0.0, "loss": 3.0},
               {"kind": "audition", "step": 10, "tokens": 640, "time": 0.0, "path": str(audition)}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


@pytest.mark.slow
async def test_play_to_a_jack_port_shows_notes_and_telemetry_stops_clean_and_saves(tiny_checkpoint, tmp_path,
                                                                                   monkeypatch):
    """A corrupt checkpoint is one sentence; then the real one plays: notes, roll, telemetry, a knob
    change read by the generation thread, panic, stop, save; FluidSynth started with f plays and
    stops with the performance; an audition plays from the Train pane
    with enter; Ctrl+Q during it asks, and the app ends with no note sounding."""
    import threading

    from pianomuse_tui.app import ConfirmScreen

    monkeypatch.chdir(tmp_path)
    run = _recorded_run_with_an_audition(tmp_path)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint at all")
    with JackServer():
        receiver = MidiReceiver()
        try:
            seen: list = []
            app = PianoMuseApp(pane="generate", args=_jack_args(broken, seed=3))
            async with app.run_test(size=(140, 40), message_hook=seen.append) as pilot:
                pane = await _pane_on_the_receiver(pilot, app, seen)
                ended = lambda: _ended(seen)  # noqa: E731

                # a corrupt checkpoint: the engine's one sentence, the app and the pane keep going
                await pilot.press("space")
                assert await wait_for(pilot, lambda: len(ended()) == 1, 60)
                assert ended()[0].error and "broken.pth" in ended()[0].error
                assert any(ended()[0].error in n.message for n in app._notifications)
                assert not pane.performing and app.is_running

                # the generation thread reads the knobs before each step: spy on what it reads
                reads: list[tuple[KnobSettings, threading.Thread]] = []
                real_snapshot = pane.knobs.snapshot

                def snapshot() -> KnobSettings:
                    values = real_snapshot()
                    reads.append((values, threading.current_thread()))
                    return values

                pane.knobs.snapshot = snapshot
                pane.use_checkpoint(tiny_checkpoint)
                await pilot.press("space")
                assert await wait_for(pilot, lambda: any(isinstance(m, PerformanceStarted) for m in seen), 60)
                assert await wait_for(pilot, lambda: _note_ons(receiver) >= 5, 60), \
                    [n.message for n in app._notifications]
                roll = pane.query_one(PianoRoll)
                assert roll.note_count >= 5
                telemetry = str(pane.query_one("#gen-telemetry").render())
                for word in ("lateness p50", "p99", "underruns", "buffer", "tok/s"):
                    assert word in telemetry, telemetry

                # a knob change reaches the running performance: the next steps read it
                version = pane.knobs.version
                await pilot.press("plus")
                assert pane.knobs.version == version + 1 and pane.knobs.temperature == pytest.approx(1.05)
                assert await wait_for(pilot, lambda: any(
                    values.version == version + 1 and values.temperature == pytest.approx(1.05)
                    and thread is not threading.main_thread() for values, thread in reads), 30)

                # panic: All Notes Off goes out on every channel at once, the performance goes on
                before = _all_notes_off(m for _, m in receiver.received())
                await pilot.press("exclamation_mark")
                assert await wait_for(pilot, lambda: _all_notes_off(m for _, m in receiver.received())
                                      >= before + 16, 10)
                assert pane.performing

                await pilot.press("space")  # stop
                assert await wait_for(pilot, lambda: len(ended()) == 2, 30)
                assert not pane.performing and ended()[1].error is None
                # the releases may still be on their way through JACK
                assert await wait_for(pilot, lambda: not sounding_after([m for _, m in receiver.received()]), 10), \
                    sounding_after([m for _, m in receiver.received()])

                await pilot.press("w")
                assert await wait_for(pilot, lambda: pane.last_saved is not None, 10)
                saved = pane.last_saved
                assert saved is not None and saved.exists()
                import mido

                notes = [m for m in mido.MidiFile(saved) if m.type == "note_on" and m.velocity]
                assert len(notes) >= 5

                # f starts FluidSynth (General MIDI soundfont, on the JACK server) and plays through
                # it; stopping the performance stops FluidSynth too
                import psutil

                def synths() -> list:
                    return [p for p in psutil.Process().children(recursive=True)
                            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE and "fluidsynth" in p.name()]

                receiver_port = pane.query_one("#gen-port").value
                started = len([m for m in seen if isinstance(m, PerformanceStarted)])
                await pilot.press("f")
                assert await wait_for(pilot, lambda: len([m for m in seen if isinstance(m, PerformanceStarted)])
                                      > started, 60), [n.message for n in app._notifications]
                assert "FluidSynth" in [m for m in seen if isinstance(m, PerformanceStarted)][-1].output
                assert len(synths()) == 1 and pane.performing
                await pilot.press("space")
                assert await wait_for(pilot, lambda: len(ended()) == 3, 30)
                assert ended()[2].error is None
                assert await wait_for(pilot, lambda: not synths(), 10), "stopping leaves no FluidSynth behind"
                pane.query_one("#gen-port").value = receiver_port

                # an audition plays from the Train pane with one key, through the same output
                await pilot.press("f2")
                app.train.query_one("#tr-runs").value = str(run)
                app.train.focus_main()
                await pilot.press("a")
                table = app.train.query_one("#tr-ckpts")
                assert await wait_for(pilot, lambda: table.row_count == 1, 30)
                before = len(receiver.received())
                app.train.focus_main()
                await pilot.press("enter")
                assert await wait_for(pilot, lambda: len(receiver.received()) > before + 5, 30)
                assert pane.performing and pane.performance.settings.midi_file == run / "auditions" / "step-00000010.mid"

                # Ctrl+Q while it plays asks first; yes stops it cleanly and the app ends
                await pilot.press("ctrl+q")
                await pilot.pause(0.2)
                assert isinstance(app.screen, ConfirmScreen) and "performance" in app.screen.question
                await pilot.press("y")
                assert await wait_for(pilot, lambda: not app.is_running, 30)
            assert sounding_after([m for _, m in receiver.received_settled()]) == {}
        finally:
            receiver.close()


@pytest.mark.slow
async def test_missing_checkpoint_is_one_sentence(tmp_path):
    app = PianoMuseApp(pane="generate", args=GenerateArgs(checkpoint=str(tmp_path / "nope.pth")))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.2)
        app.generate.focus_main()
        await pilot.press("space")
        assert await wait_for(pilot, lambda: any("nope.pth does not exist" in n.message
                                                 for n in app._notifications), 10)
        assert not app.generate.performing and app.is_running
        assert str(app.generate.query_one("#gen-play").label) == "Play"


@pytest.mark.slow
async def test_alternatives_play_and_save_and_a_vanished_port_is_one_sentence(tiny_checkpoint, tmp_path, monkeypatch):
    """K=2 alternatives: the first is heard (the timing panel says so), the receiving JACK port then
    vanishes mid-performance: the engine's sentence shows as a notification, the app keeps running,
    stop still works, and w writes both alternatives as X-1.mid and X-2.mid."""
    import mido

    monkeypatch.chdir(tmp_path)
    with JackServer():
        receiver = MidiReceiver()
        try:
            seen: list = []
            app = PianoMuseApp(pane="generate", args=_jack_args(tiny_checkpoint, seed=5, alternatives=2))
            async with app.run_test(size=(140, 40), message_hook=seen.append) as pilot:
                pane = await _pane_on_the_receiver(pilot, app, seen)
                ended = lambda: _ended(seen)  # noqa: E731
                await pilot.press("space")
                assert await wait_for(pilot, lambda: _note_ons(receiver) >= 5, 60), \
                    [n.message for n in app._notifications]
                assert pane.performance.alternatives == 2
                assert await wait_for(pilot, lambda: "hearing alternative 1 of 2"
                                      in str(pane.query_one("#gen-telemetry").render()), 5)

                # the receiving client goes away: the scheduler's port watch notices within its interval
                receiver.close()
                lost = lambda: [n.message for n in app._notifications  # noqa: E731
                                if "pm-test-recv:recv" in n.message and "disappeared" in n.message]
                assert await wait_for(pilot, lambda: bool(lost()), 10), [n.message for n in app._notifications]
                assert lost()[0].endswith("(PianoMuse reconnects by itself within 60 s).")
                assert app.is_running and pane.performing  # paused, not crashed
                assert await wait_for(pilot, lambda: "port lost" in str(pane.query_one("#gen-telemetry").render()), 5)

                await pilot.press("space")  # stop still works on a dead port
                assert await wait_for(pilot, lambda: len(ended()) == 1, 30)
                assert ended()[0].error is None and not pane.performing
                assert str(pane.query_one("#gen-play").label) == "Play"

                await pilot.press("w")
                assert await wait_for(pilot, lambda: bool(pane.last_saved_all), 10)
                saved = pane.last_saved_all
                assert [p.name[-6:] for p in saved] == ["-1.mid", "-2.mid"] and pane.last_saved == saved[0]
                assert saved[0].name[:-6] == saved[1].name[:-6]
                takes = [[(m.note, m.velocity) for m in mido.MidiFile(p) if m.type == "note_on" and m.velocity]
                         for p in saved]
                assert all(takes) and takes[0] != takes[1], "two different continuations, each with notes"
                assert any("Saved 2 alternatives" in n.message for n in app._notifications)
        finally:
            receiver.close()

"""Generate pane: a real (tiny, random-weight) checkpoint played live to a real JACK port."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from jack_server import JackServer, MidiReceiver, sounding_after, tiny_checkpoint  # noqa: E402,F401 (fixture)

from app_helpers import wait_for  # noqa: E402
from pianomuse_tui.app import PianoMuseApp  # noqa: E402
from pianomuse_tui.messages import PerformanceEnded, PerformanceStarted, PortsListed  # noqa: E402
from pianomuse_tui.widgets.piano_roll import PianoRoll  # noqa: E402

pytestmark = [pytest.mark.asyncio, pytest.mark.jack]


async def test_play_to_a_jack_port_shows_notes_and_telemetry_stops_clean_and_saves(tiny_checkpoint, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    with JackServer():
        receiver = MidiReceiver()
        try:
            seen: list = []
            args = {"checkpoint": str(tiny_checkpoint), "midi_api": "jack", "port": "pm-test-recv",
                    "bars": 64, "seed": 3, "temperature": 1.0}
            app = PianoMuseApp(pane="generate", args=args)
            async with app.run_test(size=(140, 40), message_hook=seen.append) as pilot:
                pane = app.generate
                assert await wait_for(pilot, lambda: any(isinstance(m, PortsListed) for m in seen), 30)
                await pilot.pause(0.2)
                assert "pm-test-recv" in str(pane.query_one("#gen-port").value)
                pane.focus_main()
                await pilot.press("space")
                assert await wait_for(pilot, lambda: any(isinstance(m, PerformanceStarted) for m in seen), 60)
                assert await wait_for(pilot, lambda: len([m for _, m in receiver.received()
                                                          if m[0] & 0xF0 == 0x90 and m[2]]) >= 5, 60), \
                    [n.message for n in app._notifications]
                roll = pane.query_one(PianoRoll)
                assert roll.note_count >= 5
                telemetry = str(pane.query_one("#gen-telemetry").render())
                assert "lateness p50" in telemetry and "tok/s" in telemetry

                # a knob change reaches the running performance (read before each step)
                version = pane.knobs.version
                await pilot.press("plus")
                assert pane.knobs.version == version + 1 and pane.knobs.temperature == pytest.approx(1.05)

                await pilot.press("space")  # stop
                assert await wait_for(pilot, lambda: any(isinstance(m, PerformanceEnded) for m in seen), 30)
                await pilot.pause(0.3)
                assert not pane.performing
                assert sounding_after([m for _, m in receiver.received()]) == {}

                await pilot.press("w")
                await pilot.pause(0.2)
                saved = pane.last_saved
                assert saved is not None and saved.exists()
                import mido

                notes = [m for m in mido.MidiFile(saved) if m.type == "note_on" and m.velocity]
                assert len(notes) >= 5

                # an audition (any MIDI file) plays through the same output and scheduler
                from engine.paths import CORPUS_DIR

                before = len(receiver.received())
                pane.play_file(sorted(CORPUS_DIR.rglob("*.mid"))[0])
                assert await wait_for(pilot, lambda: len(receiver.received()) > before + 5, 30)
                pane.focus_main()
                await pilot.press("space")
                assert await wait_for(pilot, lambda: not pane.performing, 30)
                await pilot.pause(0.3)
                assert sounding_after([m for _, m in receiver.received()]) == {}
        finally:
            receiver.close()


async def test_missing_checkpoint_is_one_sentence(tmp_path):
    app = PianoMuseApp(pane="generate", args={"checkpoint": str(tmp_path / "nope.pth")})
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.2)
        app.generate.focus_main()
        await pilot.press("space")
        await pilot.pause(0.2)
        assert any("does not exist" in n.message for n in app._notifications)
        assert not app.generate.performing and app.is_running

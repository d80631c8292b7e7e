"""Playing with the model in the app (Pilot): the Generate pane listens on its virtual input, a
scripted pianist plays into it on a private JACK server, the bundled model takes over after the
pause, your notes show on the piano roll in their own colour, and w saves both parts."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import mido
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from jack_server import JackServer, MidiReceiver, sounding_after
from test_duet_jack import ScriptedPianist, phrase_from_file

from app_helpers import wait_for
from engine.generate.defaults import HUMAN_CHANNEL
from pianomuse_tui.app import PianoMuseApp
from pianomuse_tui.messages import PerformanceEnded, PerformanceStarted, PortsListed
from pianomuse_tui.requests import GenerateArgs
from pianomuse_tui.widgets.piano_roll import PianoRoll, render_piano_roll

pytestmark = [pytest.mark.asyncio, pytest.mark.jack]


@pytest.mark.slow
async def test_continue_mode_in_the_generate_pane(tmp_path, monkeypatch):
    from engine.rundir import bundled_checkpoint

    monkeypatch.chdir(tmp_path)
    with JackServer():
        receiver = MidiReceiver()
        try:
            seen: list = []
            args = GenerateArgs(checkpoint=str(bundled_checkpoint()), midi_api="jack", port="pm-test-recv")
            app = PianoMuseApp(pane="generate", args=args)
            async with app.run_test(size=(140, 44), message_hook=seen.append) as pilot:
                pane = app.generate
                assert await wait_for(pilot, lambda: any(isinstance(m, PortsListed) for m in seen), 30)
                await pilot.pause(0.2)
                pane.focus_main()
                pane.query_one("#gen-in").value = "virtual"
                pane.query_one("#gen-mode").value = "continue"
                await pilot.press("space")
                assert await wait_for(pilot, lambda: any(isinstance(m, PerformanceStarted) for m in seen), 60)
                assert await wait_for(pilot, lambda: pane.performance.duet is not None, 60), \
                    [n.message for n in app._notifications]

                await pilot.pause(1.0)  # the model's first steps (the CPU step's warm-up) before anyone plays
                pianist = ScriptedPianist()
                phrase = phrase_from_file(8)
                thread = threading.Thread(target=pianist.phrase, args=(phrase,), daemon=True)
                thread.start()
                duet = pane.performance.duet
                # the pause runs out after the phrase: every note is in the state and the model takes over
                # (on a starved machine a stall mid-phrase is a pause too; then it stops and listens again)
                assert await wait_for(pilot, lambda: duet.fed_notes == len(phrase) and bool(duet.latencies())
                                      and duet.handovers[-1].at > duet.take.human[-1].time, 30), \
                    (duet.handovers, duet.fed_notes, " ".join(f"{e.time:.2f}:{e.data[0]:x}/{e.data[1]}" for e in duet.take.human))
                # the timing panel says what the model heard and how fast it answered
                panel = lambda: str(pane.query_one("#gen-telemetry").render())  # noqa: E731
                assert await wait_for(pilot, lambda: f"heard {len(phrase)} of your notes" in panel()
                                      and "ms after the last" in panel(), 10), panel()
                # the roll hears of the model's first note once the duet thread has handed it to the
                # player, a moment after the duet noted it (on a starved machine, after the panel shows it)
                roll = pane.query_one(PianoRoll)
                assert await wait_for(pilot, lambda: any(not n.yours for n in roll.snapshot()), 10)  # the model's own
                assert [n.pitch for n in roll.snapshot() if n.yours] == [p for _, _, p, _ in phrase]
                drawn = render_piano_roll(roll.snapshot(), pane.performance.music_time(), 120, 20)
                assert any(span.style == "magenta" for span in drawn.spans)

                await pilot.press("space")
                assert await wait_for(pilot, lambda: any(isinstance(m, PerformanceEnded) for m in seen), 30)
                await pilot.press("w")
                assert await wait_for(pilot, lambda: pane.last_saved is not None, 10)
                saved = pane.last_saved
                thread.join(5)
                pianist.close()
            midi = mido.MidiFile(saved)
            parts = {t.name: [m for m in t if m.type == "note_on" and m.velocity] for t in midi.tracks if t.name}
            assert [m.note for m in parts["You"]] == [p for _, _, p, _ in phrase]
            assert all(m.channel == HUMAN_CHANNEL for m in parts["You"]) and parts["PianoMuse"]
            assert sounding_after(receiver.received_when(lambda got: not sounding_after(got))) == {}
        finally:
            receiver.close()


@pytest.mark.slow
async def test_the_panes_duet_knobs_reach_the_engine(tmp_path, monkeypatch):
    """Call-and-response set up in the pane (tempo, a two-bar count-in, one-bar turns, no click, no
    pass-through, release): the engine's duet runs with exactly those settings, answers on the bar
    line they give, plays no click and does not pass your notes through."""
    from textual.widgets import Input, Select

    from engine.generate.defaults import DuetConfig
    from engine.rundir import bundled_checkpoint

    monkeypatch.chdir(tmp_path)
    with JackServer():
        receiver = MidiReceiver()
        try:
            seen: list = []
            args = GenerateArgs(checkpoint=str(bundled_checkpoint()), midi_api="jack", port="pm-test-recv",
                                midi_in="virtual", duet=DuetConfig(mode="call-and-response"))
            app = PianoMuseApp(pane="generate", args=args)
            async with app.run_test(size=(140, 44), message_hook=seen.append) as pilot:
                pane = app.generate
                assert await wait_for(pilot, lambda: any(isinstance(m, PortsListed) for m in seen), 30)
                await pilot.pause(0.2)
                assert pane.query_one("#gen-in", Select).value == "virtual"  # from the command line's --in
                for name, value in (("tempo", "150"), ("count_in", "2"), ("turn_bars", "1")):
                    pane.query_one(f"#gen-duet-{name}", Input).value = value
                pane.query_one("#gen-duet-click").value = False
                pane.query_one("#gen-duet-thru").value = False
                pane.query_one("#gen-duet-takeback", Select).value = "release"
                pane.focus_main()
                await pilot.press("space")
                assert await wait_for(pilot, lambda: pane.performance is not None and pane.performance.duet is not None, 60), \
                    [n.message for n in app._notifications]
                duet = pane.performance.duet
                assert duet.config == DuetConfig(mode="call-and-response", tempo=150.0, count_in=2, turn_bars=1,
                                                 click=False, thru=False, takeback="release")
                bar = duet.seconds_per_bar
                assert bar == pytest.approx(1.6, abs=0.05)  # 150 quarter notes per minute (the nearest Tempo token)
                pianist = ScriptedPianist()
                # your turn is the third bar (after the two-bar count-in); the model answers in the fourth
                wait = 2 * bar + 0.1 - pane.performance.music_time()
                phrase = [(max(0.0, wait) + t, d, p, v) for t, d, p, v in phrase_from_file(4, speed=2.0)]
                thread = threading.Thread(target=pianist.phrase, args=(phrase,), daemon=True)
                thread.start()
                assert await wait_for(pilot, lambda: bool(duet.handovers) and duet.handovers[0].first_note is not None, 30)
                assert duet.handovers[0].at == pytest.approx(3 * bar, abs=1e-6)
                # the model's first note is made ahead of time (and handed to the player a moment after the
                # duet notes it): stop once it has reached the receiver
                model_notes = lambda: [d for _, d in receiver.received() if d[0] == 0x90 and d[2] > 0]  # noqa: E731
                assert await wait_for(pilot, lambda: bool(model_notes()), 10)
                await pilot.press("space")
                assert await wait_for(pilot, lambda: any(isinstance(m, PerformanceEnded) for m in seen), 30)
                thread.join(5)
                pianist.close()
            got = [d for _, d in receiver.received()]
            assert duet.fed_notes == 4 and all(e.channel == HUMAN_CHANNEL for e in duet.take.human)
            # no click and your notes not passed through (the panic at the end speaks on every channel)
            assert not [d for d in got if d[0] & 0x0F in (9, HUMAN_CHANNEL) and d[0] & 0xF0 in (0x80, 0x90)]
            assert [d for d in got if d[0] == 0x90 and d[2] > 0]  # the model played
        finally:
            receiver.close()

"""What a newcomer hits first in the app: play from anywhere in the Generate pane, a machine with no
MIDI system (what the pane offers instead, and errors that stay readable), and the quit dialog."""
from __future__ import annotations

import os

import mido
import pytest
from textual.widgets import Select, Static

from app_helpers import screen_text, wait_for
from pianomuse_tui.app import ConfirmScreen, PianoMuseApp
from pianomuse_tui.messages import PerformanceEnded, PortsListed, TakeWritten

pytestmark = pytest.mark.asyncio

NO_MIDI_SYSTEM = not os.path.exists("/dev/snd/seq")


@pytest.fixture
def no_jack(monkeypatch):
    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"pianomuse-no-such-server-{os.getpid()}")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")


def _ended(seen: list) -> list[PerformanceEnded]:
    return list({id(m): m for m in seen if isinstance(m, PerformanceEnded)}.values())


@pytest.mark.skipif(not NO_MIDI_SYSTEM, reason="this machine has an ALSA sequencer")
async def test_no_midi_system_space_after_a_dropdown_and_w_writes_the_take(no_jack, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen: list = []
    app = PianoMuseApp(pane="generate", args={"bars": 1, "seed": 3})
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

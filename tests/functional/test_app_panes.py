"""Every pane renders at 140x40 and 100x30; help, palette, pane switching, and bad input."""
from __future__ import annotations

import asyncio

import pytest
from textual.command import CommandPalette
from textual.widgets import TabbedContent

from app_helpers import screen_text, wait_for
from engine.generate import SamplingConfig
from pianomuse_tui.app import HelpScreen, PianoMuseApp
from pianomuse_tui.messages import DeviceDetected

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("size", [(140, 40), (100, 30)])
@pytest.mark.slow
async def test_three_panes_render_at_both_sizes(size):
    seen: list = []
    app = PianoMuseApp()
    async with app.run_test(size=size, message_hook=seen.append) as pilot:
        assert await wait_for(pilot, lambda: any(isinstance(m, DeviceDetected) for m in seen), 30)
        await pilot.pause(0.1)
        assert app.sub_title.startswith(("CPU", "GPU"))
        tabs = app.query_one("#panes", TabbedContent)
        for key, pane_id, must_show in (("f1", "dataset", ["Files", "Summary", "Selected file", "Scan"]),
                                        ("f2", "train", ["Loss", "Now", "Memory", "Checkpoints", "New"]),
                                        ("f3", "generate", ["Piano roll", "Knobs", "Timing", "Play", "Panic"])):
            await pilot.press(key)
            await pilot.pause(0.2)
            assert tabs.active == pane_id
            shot = screen_text(app)
            for word in must_show:
                assert word in shot, f"{word!r} missing from the {pane_id} pane at {size}"
            # nothing of the pane is cut off: every panel sits inside the screen
            for widget in app.screen.query(".panel"):
                if widget.display and widget.region.area:
                    assert widget.region.right <= size[0] and widget.region.bottom <= size[1], widget
        assert "Quit" in shot and "palette" in shot  # footer keys


@pytest.mark.slow
async def test_help_and_palette_list_every_action():
    app = PianoMuseApp()
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.pause(0.2)
        await pilot.press("question_mark")
        await pilot.pause(0.2)
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert not isinstance(app.screen, HelpScreen)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        for pane in (app.dataset, app.train, app.generate):
            for title, _help, _action in pane.COMMANDS_LIST:
                assert any(title in t for t in titles), title
            for binding in pane.BINDINGS:  # every key's action, shown in the footer or not
                assert any(binding.action == a for _t, _h, a in pane.COMMANDS_LIST), \
                    f"{binding.action} has a key but no palette entry"
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        assert isinstance(app.screen, CommandPalette)
        await pilot.press(*"show train")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert app.query_one("#panes", TabbedContent).active == "train"


@pytest.mark.slow
async def test_bad_knob_and_override_input_get_one_sentence(tmp_path):
    app = PianoMuseApp(pane="generate")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.2)
        temp = app.generate.query_one("#gen-temperature")
        temp.value = "hot"
        temp.focus()
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert any("temperature must be a number" in n.message for n in app._notifications)
        assert app.generate.knobs.temperature == pytest.approx(SamplingConfig().temperature)  # the previous value stays
        await pilot.press("f2")
        await pilot.pause(0.1)
        app.train.query_one("#tr-overrides").value = "lr=3"
        app.train.query_one("#tr-runs").value = str(tmp_path)
        app.train.focus_main()
        await pilot.press("n")
        await pilot.pause(0.1)
        assert any("is not section.key=value" in n.message for n in app._notifications)
        assert app.train.proc is None and app.is_running


@pytest.mark.slow
async def test_generate_pane_shows_each_modes_duet_knobs_at_80x24_checks_them_and_taps_the_tempo():
    """With an input chosen, the Generate pane shows the knobs the chosen mode uses (and only those),
    each inside an 80x24 screen; a bad value gets one sentence and nothing plays; t taps the tempo."""
    from textual.widgets import Input, Select

    from engine.generate.defaults import MODES, DuetConfig
    from pianomuse_tui.requests import GenerateArgs

    args = GenerateArgs(midi_api="alsa", duet=DuetConfig(mode="accompany", split=48, lead=0.05))
    app = PianoMuseApp(pane="generate", args=args)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.generate
        await pilot.pause(0.3)
        assert not pane.query_one("#gen-duet").display  # no input chosen: the model plays alone, no duet knobs
        # the command line's settings are in the fields
        assert pane.query_one("#gen-mode", Select).value == "accompany"
        assert pane.query_one("#gen-duet-split", Input).value == "48" and pane.query_one("#gen-duet-lead", Input).value == "0.05"
        pane.query_one("#gen-in", Select).value = "virtual"
        for mode in MODES:
            pane.query_one("#gen-mode", Select).value = mode
            await pilot.pause(0.2)
            shown = [name for name in DuetConfig.knobs() if pane.query_one(f"#gen-knob-{name}").display]
            assert shown == DuetConfig.knobs(mode)
            for name in shown:
                region = pane.query_one(f"#gen-duet-{name}").region
                assert region.area and region.right <= 80 and region.bottom <= 24, (mode, name, region)
        # call-and-response's knobs, as text; the pane builds the same DuetConfig the command line does
        pane.query_one("#gen-mode", Select).value = "call-and-response"
        pane.query_one("#gen-duet-split", Input).value = "x"  # a knob the mode does not use is not read
        pane.query_one("#gen-duet-turn_bars", Input).value = "0"
        pane.query_one("#gen-play").focus()
        await pilot.press("space")
        await pilot.pause(0.2)
        message = str(pane.query_one("#gen-message").render())
        assert "turns must be at least 1 bar and the count-in 0 bars or more." in message and pane.performance is None
        pane.query_one("#gen-duet-turn_bars", Input).value = "3"
        pane.query_one("#gen-duet-takeback", Select).value = "release"
        pane.query_one("#gen-duet-click").value = False
        assert pane.duet_settings() == DuetConfig(mode="call-and-response", turn_bars=3, takeback="release", click=False)
        # tap tempo: t on the beat; from the second tap on the tempo field shows the estimate
        for _ in range(4):
            await pilot.press("t")
            await pilot.pause(0.5)
        tapped = float(pane.query_one("#gen-duet-tempo", Input).value)
        assert 60 <= tapped <= 125, tapped  # 0.5 s pauses and the keys' own time: at most 120
        assert pane.duet_settings().tempo == tapped


async def test_a_toast_that_expires_while_the_app_closes_is_no_crash():
    """The app's screens go before its timers stop; on a loaded machine the repaint that follows an
    expired toast came due in between and raised ScreenStackError as Pilot ended the app."""
    app = PianoMuseApp(pane="generate")
    close_screens = app._close_all

    async def slowly_closing() -> None:  # what a busy machine stretches: screens gone, timers alive
        await close_screens()
        assert not app.screen_stack and not app.generate.is_on_screen  # (this raised too)
        app.notify("A worker failed as the app closed.", severity="error", timeout=0.05)
        await asyncio.sleep(1.0)  # the toast's repaint comes due 0.25 s after it is shown

    app._close_all = slowly_closing
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.2)
        assert app.generate.is_on_screen
    assert app._exception is None and app.return_code in (0, None)

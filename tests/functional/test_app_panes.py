"""Every pane renders at 140x40 and 100x30; help, palette, pane switching, and bad input."""
from __future__ import annotations

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

"""Message coalescing: a flood of state updates collapses to the newest; data messages never do."""
from __future__ import annotations

from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.widget import Widget

from pianomuse_tui.messages import MetricsArrived, ResourceSample, RunEnded, ScanProgress

pytestmark = pytest.mark.asyncio


class Sink(Widget):
    def __init__(self) -> None:
        super().__init__()
        self.handled: list = []

    def on_metrics_arrived(self, m: MetricsArrived) -> None:
        self.handled.append(m)
        m.stop()

    def on_scan_progress(self, m: ScanProgress) -> None:
        self.handled.append(m)
        m.stop()

    def on_resource_sample(self, m: ResourceSample) -> None:
        self.handled.append(m)
        m.stop()

    def on_run_ended(self, m: RunEnded) -> None:
        self.handled.append(m)
        m.stop()


class Flood(App):
    def compose(self) -> ComposeResult:
        yield Sink()


async def test_a_flood_of_state_updates_collapses_to_the_latest():
    app = Flood()
    async with app.run_test() as pilot:
        sink = app.query_one(Sink)
        # posted back to back while the sink is busy: they all queue before it handles any
        for i in range(1000):
            sink.post_message(MetricsArrived(Path("run"), pending=i))
        for i in range(50):
            sink.post_message(RunEnded(Path("run"), exit_code=i))
        for i in range(200):
            sink.post_message(ScanProgress(i, 200))
        await pilot.pause(0.2)
        metrics = [m for m in sink.handled if isinstance(m, MetricsArrived)]
        ended = [m for m in sink.handled if isinstance(m, RunEnded)]
        progress = [m for m in sink.handled if isinstance(m, ScanProgress)]
        assert len(metrics) < 1000 and metrics[-1].pending == 999
        assert [m.exit_code for m in ended] == list(range(50))  # data messages are all delivered, in order
        assert len(progress) < 200 and progress[-1].done == 199


async def test_different_kinds_do_not_replace_each_other():
    app = Flood()
    async with app.run_test() as pilot:
        sink = app.query_one(Sink)
        sink.post_message(MetricsArrived(Path("run"), pending=1))
        sink.post_message(ResourceSample(ram_rss=1.0))
        sink.post_message(MetricsArrived(Path("run"), pending=2))
        await pilot.pause(0.1)
        kinds = [type(m).__name__ for m in sink.handled]
        assert kinds == ["MetricsArrived", "ResourceSample", "MetricsArrived"]

"""Memory and utilisation meters: the trainer's own numbers plus NVML (GPU) or psutil (CPU)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.widgets import Static

from ..messages import ResourceSample

if TYPE_CHECKING:
    from engine.metric_records import TrainRecord

GIB = 1024**3


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f} GiB" if n < 10 * GIB else f"{n / GIB:.1f} GiB"


def bar(fraction: float | None, width: int) -> Text:
    """``#####-----`` with the filled part coloured by how full it is."""
    width = max(1, width)
    if fraction is None:
        return Text("·" * width, style="dim")
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    colour = "green" if fraction < 0.75 else "yellow" if fraction < 0.92 else "red"
    return Text("█" * filled, style=colour) + Text("░" * (width - filled), style="dim")


class MemoryMeter(Static):
    """Allocated / reserved / peak from the trainer; GPU util+memory or process RAM from the machine."""

    DEFAULT_CSS = "MemoryMeter { height: auto; }"

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.trainer: TrainRecord | None = None  # the newest training step (its memory is None on a CPU)
        self.machine = ResourceSample()

    def update_trainer(self, record: TrainRecord | None) -> None:
        self.trainer = record
        self.refresh_text()

    def update_machine(self, sample: ResourceSample) -> None:
        self.machine = sample
        self.refresh_text()

    def on_resize(self) -> None:
        self.refresh_text()

    def refresh_text(self) -> None:
        width = max(10, self.content_size.width or 28)
        text = Text()
        t, m = self.trainer, self.machine
        alloc, reserved, peak = (t.mem_alloc, t.mem_reserved, t.mem_peak) if t is not None else (None, None, None)
        total, util, rss, ram_total = m.gpu_mem_total, m.gpu_util, m.ram_rss, m.ram_total
        ref = total or reserved or peak
        if alloc is None and reserved is None and util is None:
            # a CPU run: torch reports no device memory, so the bar is the processes' RAM of the machine's
            text.append(f"RAM {gib(rss)} ")
            text.append_text(bar(rss / ram_total if rss and ram_total else None, max(4, width - 22)))
            text.append(f" of {gib(ram_total)}")
            text.append("\nthe app and its training run (CPU: no device memory)", style="dim")
            self.update(text)
            return
        text.append(f"alloc {gib(alloc)} ")
        text.append_text(bar(alloc / ref if alloc and ref else None, max(4, width - 18)))
        text.append(f"\nreserved {gib(reserved)}  peak {gib(peak)}")
        if util is not None:
            text.append(f"\nGPU {util:.0f}% ")
            text.append_text(bar(util / 100, max(4, width - 26)))
            text.append(f" {gib(m.gpu_mem_used)}/{gib(total)}")
        if rss is not None:
            text.append(f"\nprocess RAM {gib(rss)}")
        if m.source:
            text.append(f"  ({m.source})", style="dim")
        self.update(text)

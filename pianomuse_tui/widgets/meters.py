"""Memory and utilisation meters: the trainer's own numbers plus NVML (GPU) or psutil (CPU)."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

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
        self.trainer_mem: dict[str, float | None] = {}
        self.machine: dict[str, float | str | None] = {}

    def update_trainer(self, alloc: float | None, reserved: float | None, peak: float | None) -> None:
        self.trainer_mem = {"alloc": alloc, "reserved": reserved, "peak": peak}
        self.refresh_text()

    def update_machine(self, **sample) -> None:
        self.machine = sample
        self.refresh_text()

    def on_resize(self) -> None:
        self.refresh_text()

    def refresh_text(self) -> None:
        width = max(10, self.content_size.width or 28)
        text = Text()
        alloc = self.trainer_mem.get("alloc")
        reserved = self.trainer_mem.get("reserved")
        peak = self.trainer_mem.get("peak")
        total = self.machine.get("gpu_mem_total")
        ref = total or reserved or peak
        util = self.machine.get("gpu_util")
        rss, ram_total = self.machine.get("ram_rss"), self.machine.get("ram_total")
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
            used = self.machine.get("gpu_mem_used")
            text.append(f"\nGPU {util:.0f}% ")
            text.append_text(bar(util / 100, max(4, width - 26)))
            text.append(f" {gib(used)}/{gib(total)}")
        if rss is not None:
            text.append(f"\nprocess RAM {gib(rss)}")
        source = self.machine.get("source")
        if source:
            text.append(f"  ({source})", style="dim")
        self.update(text)

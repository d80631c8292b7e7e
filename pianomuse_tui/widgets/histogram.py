"""Histograms drawn with block characters (velocity and pitch of one file)."""
from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

# eighth-block heights: one character cell shows 8 levels
_BLOCKS = " ▁▂▃▄▅▆▇█"


def resample(counts: Sequence[float], width: int) -> list[float]:
    """Sum ``counts`` into ``width`` bins (or spread them out when there are fewer counts)."""
    n = len(counts)
    if n == 0 or width <= 0:
        return []
    if n <= width:
        return [float(c) for c in counts]
    out = [0.0] * width
    for i, c in enumerate(counts):
        out[i * width // n] += float(c)
    return out


def block_histogram(counts: Sequence[float], width: int, height: int = 3, style: str = "") -> Text:
    """Vertical bars, ``height`` rows of eighth blocks, at most ``width`` columns."""
    bins = resample(counts, max(1, width))
    text = Text(style=style)
    if not bins:
        return text.append("(no data)", style="dim")
    peak = max(bins) or 1.0
    levels = [round(b / peak * height * 8) for b in bins]
    for row in range(height, 0, -1):
        floor = (row - 1) * 8
        line = "".join(_BLOCKS[max(0, min(8, lv - floor))] for lv in levels)
        text.append(line)
        if row > 1:
            text.append("\n")
    return text


def labelled_histogram(title: str, counts: Sequence[float], low: str, high: str, width: int,
                       height: int = 3, style: str = "") -> Text:
    """A histogram with a title line and the low/high labels under its ends."""
    text = Text()
    text.append(f"{title}\n", style="bold")
    bars = block_histogram(counts, width, height, style)
    text.append_text(bars)
    used = len(resample(counts, max(1, width))) or len("(no data)")
    gap = max(1, used - len(low) - len(high))
    text.append(f"\n{low}{' ' * gap}{high}", style="dim")
    return text

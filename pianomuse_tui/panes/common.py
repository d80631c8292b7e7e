"""What the three panes share: the base class and small formatting helpers."""
from __future__ import annotations

from typing import Any, ClassVar

from textual.containers import Container


class Cancelled(Exception):
    """Raised inside an engine progress callback to stop a job the user cancelled."""


class PaneBase(Container):
    """A pane: its keys (BINDINGS), its palette entries (COMMANDS_LIST) and its main widget."""

    COMMANDS_LIST: ClassVar[list[tuple[str, str, str]]] = []  # (title, help, action name)

    def focus_main(self) -> None:
        self.focus()


def one_sentence(error: BaseException) -> str:
    """The first line of an error's message (its type name when it has none), for a notification."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def fmt_count(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    n = float(n)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def fmt_duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def fill_table(table, columns, rows) -> None:
    """Replace a DataTable's content: ``columns`` (key, label) pairs, ``rows`` (key, cells).

    Each column gets a fixed width, its widest cell, before any row is drawn. DataTable measures
    auto-width columns only when it next idles and keeps lines drawn before that, so on a busy
    machine a table could stay drawn at its header widths; this draws the same table every time.
    """
    from rich.cells import cell_len
    from rich.text import Text

    def shown(cell) -> str:
        return cell.plain if isinstance(cell, Text) else str(cell)

    widths = [max([cell_len(label)] + [cell_len(shown(cells[i])) for _, cells in rows])
              for i, (_, label) in enumerate(columns)]
    table.clear(columns=True)
    for (key, label), width in zip(columns, widths):
        table.add_column(label, key=key, width=width)
    for key, cells in rows:
        table.add_row(*cells, key=key)

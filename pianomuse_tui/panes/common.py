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


def field(mapping: Any, *names: str) -> Any:
    """The first of ``names`` present in ``mapping`` (the engine's reports are plain dicts)."""
    if not isinstance(mapping, dict):
        return None
    for name in names:
        if name in mapping and mapping[name] is not None:
            return mapping[name]
    return None


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


def progress_args(args: tuple, kwargs: dict) -> tuple[int, int, str]:
    """(done, total, current item) from an engine progress callback's arguments.

    The engine calls ``on_progress(done, total, ...)``; a single dict or object argument with
    those fields is accepted as well.
    """
    if len(args) == 1 and not isinstance(args[0], (int, float)):
        obj = args[0]
        get = obj.get if isinstance(obj, dict) else lambda k, d=None: getattr(obj, k, d)
        return int(get("done", 0) or 0), int(get("total", 0) or 0), str(get("path", "") or get("current", "") or "")
    numbers = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
    rest = [a for a in args if not isinstance(a, (int, float))]
    done = int(kwargs.get("done", numbers[0] if numbers else 0))
    total = int(kwargs.get("total", numbers[1] if len(numbers) > 1 else 0))
    current = kwargs.get("path") or kwargs.get("current") or (rest[0] if rest else "")
    if isinstance(current, dict):
        current = current.get("path", "")
    return done, total, str(getattr(current, "path", current))


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

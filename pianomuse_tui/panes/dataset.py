"""Dataset pane: scan a folder of MIDI files, read the report, prepare the token store.

The scan and the preparation are the engine's (``engine.data.check.scan``,
``engine.data.store.prepare``); this pane runs them in thread workers, shows their progress, and
lays out the report.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, DataTable, Input, Label, ProgressBar, Select, Static
from textual.worker import get_current_worker

from engine.data.check import FileRecord, ScanReport, ScanSummary
from engine.data.piano_policy import DEFAULT_PIANO_POLICY, PIANO_POLICIES
from engine.data.store import PrepareSummary

from ..messages import PrepareFinished, PrepareProgress, ScanFinished, ScanProgress
from ..requests import DatasetArgs
from ..widgets.histogram import labelled_histogram
from .common import PaneBase, Cancelled, fill_table, fmt_count, fmt_duration, one_sentence

STATUS_STYLE = {"ok": "green", "warning": "yellow", "error": "bold red"}


class SortCell(Text):
    """A table cell that sorts by its value rather than by its text."""

    def __init__(self, shown: str, value: Any, style: str = "", justify: str = "left") -> None:
        super().__init__(shown, style=style, justify=justify)
        self.sort_value = value


def _sort_key(cell: Any) -> Any:
    value = getattr(cell, "sort_value", cell)
    # numbers before missing values, whatever the direction of the column
    return (value is None, value if value is not None else 0)


class DatasetPane(PaneBase):
    BINDINGS = [
        Binding("s", "scan", "Scan"),
        Binding("escape", "cancel", "Cancel", show=False),
        Binding("p", "prepare", "Prepare"),
        Binding("slash", "filter", "Filter"),
        Binding("o", "folder", "Folder"),
    ]
    COMMANDS_LIST = [
        ("Scan folder", "Check every MIDI file of the folder (cancellable)", "scan"),
        ("Cancel scan or prepare", "Stop the running dataset job", "cancel"),
        ("Prepare token store", "Tokenize the good files into a token store", "prepare"),
        ("Filter files", "Show only files whose path or status matches", "filter"),
        ("Change folder", "Type another MIDI folder to scan", "folder"),
    ]

    def __init__(self, args: DatasetArgs | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        from engine.paths import CORPUS_DIR

        # `pianomuse-tui check DIR --workers N --policy all --json report.json` opens the pane with these
        self.args = args or DatasetArgs(scan=False)
        folder = Path(self.args.folder or CORPUS_DIR)
        try:
            folder = folder.resolve().relative_to(Path.cwd())
        except ValueError:
            pass
        self.start_folder = folder
        self.report: ScanReport | None = None
        self.records: dict[str, FileRecord] = {}
        self.names: dict[str, str] = {}  # path -> the name shown (relative to the scanned folder)
        self._cancel = threading.Event()
        self._sort: tuple[str, bool] = ("status", False)
        self.rows_shown = 0

    def compose(self) -> ComposeResult:
        with Horizontal(classes="toolbar"):
            yield Label("Folder", classes="field-label")
            yield Input(str(self.start_folder), id="ds-folder", placeholder="folder of .mid files")
            # which tracks become the piano part, for the scan and the prepare alike (check --policy)
            yield Select([(f"policy: {name}", name) for name in PIANO_POLICIES], allow_blank=False,
                         value=self.args.policy or DEFAULT_PIANO_POLICY, id="ds-policy",
                         tooltip="\n".join(f"{name}: {text}" for name, text in PIANO_POLICIES.items()))
            yield Button("Scan", id="ds-scan", variant="primary")
            yield Button("Prepare store", id="ds-prepare")
            yield Button("Cancel", id="ds-cancel", disabled=True)
        with Horizontal(classes="progress-row"):
            yield ProgressBar(total=1, id="ds-progress", show_eta=True)
            yield Label("idle", id="ds-progress-label")
        with Horizontal(id="ds-body", classes="body"):
            with Vertical(id="ds-files-box", classes="panel"):
                yield Input(placeholder="filter: path or status", id="ds-filter", classes="hidden")
                yield DataTable(id="ds-files", cursor_type="row", zebra_stripes=True)
            with Vertical(id="ds-side"):
                yield Static("no scan yet: press s", id="ds-summary", classes="panel")
                with VerticalScroll(id="ds-detail-box", classes="panel"):
                    yield Static("select a file", id="ds-detail")

    def on_mount(self) -> None:
        self.query_one("#ds-files-box").border_title = "Files"
        self.query_one("#ds-summary").border_title = "Summary"
        self.query_one("#ds-detail-box").border_title = "Selected file"
        fill_table(self.query_one("#ds-files", DataTable), COLUMNS, [])
        if self.args.scan:
            self.call_after_refresh(self.action_scan)

    def focus_main(self) -> None:
        self.query_one("#ds-files", DataTable).focus()

    @property
    def busy(self) -> bool:
        # pending counts too: a cancel pressed right after "scan" must reach the scan
        return any(w.group == "dataset" and not w.is_finished for w in self.app.workers)

    @property
    def policy(self) -> str:
        """The piano policy chosen in the toolbar (read on the UI thread, handed to the workers)."""
        return str(self.query_one("#ds-policy", Select).value)

    @property
    def folder(self) -> Path:
        return Path(self.query_one("#ds-folder", Input).value.strip() or ".").expanduser()

    # ---- actions --------------------------------------------------------------------------------

    def action_folder(self) -> None:
        self.query_one("#ds-folder", Input).focus()

    def action_filter(self) -> None:
        box = self.query_one("#ds-filter", Input)
        box.remove_class("hidden")
        box.focus()

    @on(Input.Changed, "#ds-filter")
    def _filter_changed(self) -> None:
        self._fill_table()

    @on(Input.Submitted, "#ds-filter")
    def _filter_done(self) -> None:
        self.focus_main()

    @on(Input.Submitted, "#ds-folder")
    def _folder_submitted(self) -> None:
        self.action_scan()

    @on(Button.Pressed, "#ds-scan")
    def action_scan(self) -> None:
        if self.busy:
            self.notify("A dataset job is already running; press escape to cancel it first.", severity="warning")
            return
        self._cancel.clear()
        self._set_running(True, "scanning…")
        self._scan(self.folder, self.policy)

    @on(Button.Pressed, "#ds-cancel")
    def action_cancel(self) -> None:
        if self.busy:
            self._cancel.set()
            self.query_one("#ds-progress-label", Label).update("cancelling…")

    @on(Button.Pressed, "#ds-prepare")
    def action_prepare(self) -> None:
        if self.busy:
            self.notify("A dataset job is already running; wait for it or press escape.", severity="warning")
            return
        self._cancel.clear()
        self._set_running(True, "preparing…")
        self._prepare(self.folder, Path(self.args.store) if self.args.store else None, self.policy)

    def shutdown(self) -> None:
        self._cancel.set()

    def _set_running(self, running: bool, label: str) -> None:
        self.query_one("#ds-cancel", Button).disabled = not running
        self.query_one("#ds-scan", Button).disabled = running
        self.query_one("#ds-prepare", Button).disabled = running
        self.query_one("#ds-progress-label", Label).update(label)
        if running:
            self.query_one("#ds-progress", ProgressBar).update(total=None, progress=0)

    # ---- workers --------------------------------------------------------------------------------

    def _progress_callback(self, make_message):
        """The engine's ``on_progress(done, total, record)``: posts coalescing messages, honours cancel."""
        worker = get_current_worker()
        started = time.monotonic()

        def on_progress(done: int, total: int, record: FileRecord) -> None:
            if self._cancel.is_set() or worker.is_cancelled:
                raise Cancelled("cancelled by the user")
            rate = done / max(1e-6, time.monotonic() - started)
            self.post_message(make_message(done, total, record.path, rate))

        return on_progress

    @work(thread=True, exclusive=True, group="dataset", exit_on_error=False, name="scan")
    def _scan(self, folder: Path, piano_policy: str) -> None:
        from engine.data import check

        # the disk is looked at here, never on the UI thread: the folder check and the names shown
        if not folder.is_dir():
            self.post_message(ScanFinished(folder, None, error=_not_a_folder(folder)))
            return
        callback = self._progress_callback(lambda d, t, c, r: ScanProgress(d, t, c, r))
        try:
            report = check.scan(folder, workers=self.args.workers, policy={"piano_policy": piano_policy}, on_progress=callback)
            if self.args.report_json:
                report.write(self.args.report_json)
        except Cancelled:
            self.post_message(ScanFinished(folder, None, cancelled=True))
            return
        except Exception as exc:  # noqa: BLE001 - shown as the engine's one sentence
            self.post_message(ScanFinished(folder, None, error=one_sentence(exc)))
            return
        root = folder.resolve()
        names = {f.path: _relative(f.path, root) for f in report.files}
        self.post_message(ScanFinished(folder, report, names=names))

    @work(thread=True, exclusive=True, group="dataset", exit_on_error=False, name="prepare")
    def _prepare(self, folder: Path, out: Path | None, piano_policy: str) -> None:
        from engine.data import store

        if not folder.is_dir():
            self.post_message(PrepareFinished(None, error=_not_a_folder(folder)))
            return
        callback = self._progress_callback(lambda d, t, c, r: PrepareProgress(d, t, c))
        # the toolbar's policy (`check DIR --policy all` sets it at start) holds for the prepare too
        config = {"tokenizer": {"piano_policy": piano_policy}}
        try:
            out = out or store.store_for(folder, config)
            result = store.prepare(folder, out, config, on_progress=callback)
        except Cancelled:
            self.post_message(PrepareFinished(None, cancelled=True))
            return
        except Exception as exc:  # noqa: BLE001
            self.post_message(PrepareFinished(None, error=one_sentence(exc)))
            return
        self.post_message(PrepareFinished(out, detail=_describe_store(result)))

    # ---- messages from the workers --------------------------------------------------------------

    def on_scan_progress(self, message: ScanProgress) -> None:
        bar = self.query_one("#ds-progress", ProgressBar)
        bar.update(total=message.total or None, progress=message.done)
        self.query_one("#ds-progress-label", Label).update(
            f"{message.done}/{message.total} files  {message.files_per_s:.0f} files/s")

    def on_prepare_progress(self, message: PrepareProgress) -> None:
        self.query_one("#ds-progress", ProgressBar).update(total=message.total or None, progress=message.done)
        self.query_one("#ds-progress-label", Label).update(f"prepare {message.done}/{message.total}")

    def on_scan_finished(self, message: ScanFinished) -> None:
        if message.cancelled:
            self._set_running(False, "scan cancelled; the previous report is kept")
            self.notify("Scan cancelled.")
            return
        if message.error:
            self._set_running(False, "scan failed")
            self.notify(message.error, severity="error", timeout=8)
            return
        self.report = message.report
        files = message.report.files
        self.records = {f.path: f for f in files}
        self.names = message.names
        _show_done(self.query_one("#ds-progress", ProgressBar), len(files))
        self._set_running(False, f"{len(files)} files scanned in {message.folder}")
        self._fill_table()
        self.query_one("#ds-summary", Static).update(render_summary(message.report.summary))
        table = self.query_one("#ds-files", DataTable)
        if table.row_count:
            self._show_detail(table.coordinate_to_cell_key((0, 0)).row_key.value)

    def on_prepare_finished(self, message: PrepareFinished) -> None:
        if message.cancelled:
            self._set_running(False, "prepare cancelled; the files done so far are kept and the next prepare resumes from them")
            return
        if message.error:
            self._set_running(False, "prepare failed")
            self.notify(message.error, severity="error", timeout=8)
            return
        _show_done(self.query_one("#ds-progress", ProgressBar), 1)
        self._set_running(False, f"store ready: {message.store}")
        self.notify(f"Token store ready at {message.store}. {message.detail}".strip(), timeout=6)
        self.app.train.data_prepared(message.store)

    # ---- table and detail -----------------------------------------------------------------------

    def _fill_table(self) -> None:
        table = self.query_one("#ds-files", DataTable)
        needle = self.query_one("#ds-filter", Input).value.strip().lower()
        rows = []
        for path, f in self.records.items():
            status = f.status
            rel = self.names.get(path, path)
            if needle and needle not in rel.lower() and needle not in status:
                continue
            seconds, notes, tokens, reasons = f.stats.duration_s, f.stats.notes, f.stats.tokens, f.reasons
            rows.append((path, (
                SortCell(status, ("error", "warning", "ok").index(status), STATUS_STYLE[status]),
                SortCell(rel, rel),
                SortCell(fmt_duration(seconds), seconds, justify="right"),
                SortCell(fmt_count(notes), notes, justify="right"),
                SortCell(fmt_count(tokens), tokens, justify="right"),
                SortCell("; ".join(map(str, reasons))[:60], len(reasons), style="dim"),
            )))
        fill_table(table, COLUMNS, rows)
        self.rows_shown = len(rows)
        column, reverse = self._sort
        table.sort(column, key=_sort_key, reverse=reverse)

    @on(DataTable.HeaderSelected, "#ds-files")
    def _header_clicked(self, event: DataTable.HeaderSelected) -> None:
        column = str(event.column_key.value)
        current, reverse = self._sort
        self._sort = (column, not reverse if column == current else column not in ("status", "file"))
        event.data_table.sort(column, key=_sort_key, reverse=self._sort[1])

    @on(DataTable.RowHighlighted, "#ds-files")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value is not None:
            self._show_detail(event.row_key.value)

    def _show_detail(self, path: str) -> None:
        record = self.records.get(path)
        if record is None:
            return
        box = self.query_one("#ds-detail", Static)
        width = max(20, (box.content_size.width or 40) - 2)
        # the histograms are in the record: the engine counted them in the scan's own pass
        box.update(render_detail(record, self.names.get(path, path), width))


# ---- rendering of the report (pure functions, tested on their own) ------------------------------


def _not_a_folder(folder: Path) -> str:
    return f"{folder} is not a folder; type the path of a folder of MIDI files and press enter."


def _relative(path: str, root: Path) -> str:
    """``path`` relative to the (resolved) ``root``; resolving touches the disk: workers only."""
    try:
        return str(Path(path).resolve().relative_to(root))
    except (ValueError, OSError):
        return str(path)


def _describe_store(result: PrepareSummary) -> str:
    kept = f", {result.resumed} kept from a cancelled prepare" if result.resumed else ""
    return (f"{result.pieces} pieces, {fmt_count(result.tokens)} tokens; "
            f"{result.tokenized} tokenized, {result.reused} unchanged{kept}, {result.skipped} skipped")


def render_summary(summary: ScanSummary) -> Text:
    """Totals, status counts and the most frequent reasons, from the engine's summary."""
    text = Text()
    text.append(f"{fmt_count(summary.files)} files", style="bold")
    text.append(f"  {summary.hours:.2f} h  {fmt_count(summary.notes)} notes  {fmt_count(summary.tokens)} tokens\n")
    for status in ("ok", "warning", "error"):
        text.append(f"{status} {summary.status.get(status, 0)}  ", style=STATUS_STYLE[status])
    if summary.reasons:
        text.append("\ntop reasons:", style="bold")
        for item in summary.reasons[:5]:
            text.append(f"\n  {item.reason} ({item.files})")
    return text


def render_detail(record: FileRecord, name: str, width: int) -> Text:
    status = record.status
    stats = record.stats
    text = Text()
    text.append(f"{name}\n", style="bold")
    text.append(status, style=STATUS_STYLE[status])
    for reason in record.reasons:
        text.append(f"\n  • {reason}", style="yellow" if status == "warning" else "red")
    shown = []
    for key, value in stats.to_dict().items():
        if key.endswith(("hash", "histogram")) or key == "bytes":
            continue
        if isinstance(value, dict):
            inner = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in value.items())
            shown.append(f"{key.replace('_', ' ')}: {inner}")
        elif isinstance(value, (int, float, str, bool)):
            shown.append(f"{key.replace('_', ' ')} {value:.4g}" if isinstance(value, float) else
                         f"{key.replace('_', ' ')} {value}")
        elif isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
            shown.append(f"{key.replace('_', ' ')} {value[0]}–{value[1]}")
    if shown:
        text.append("\n\n")
        line = ""
        for item in shown:
            if line and len(line) + len(item) + 3 > width:
                text.append(line + "\n")
                line = ""
            line += ("   " if line else "") + item
        text.append(line)
    velocity = stats.velocity_histogram
    if velocity:
        text.append("\n\n")
        text.append_text(labelled_histogram("velocity", velocity, "0", "127", width))
    pitch = stats.pitch_histogram
    if pitch:
        # show the piano's keys only: A0 (21) .. C8 (108)
        keys = list(pitch[21:109]) if len(pitch) >= 109 else list(pitch)
        text.append("\n\n")
        text.append_text(labelled_histogram("pitch", keys, "A0", "C8", width))
    return text


def _show_done(bar: ProgressBar, total: int) -> None:
    """A finished job: a full bar and no countdown, however long the job took.

    Textual keeps the ETA's speed samples while the total stays the same, so a slow job would end
    on 00:00:00 and a fast one on --:--:--; dropping the samples first makes the end state one.
    """
    bar.update(total=None)
    bar.update(total=max(1, total), progress=max(1, total))


COLUMNS = (("status", "status"), ("file", "file"), ("minutes", "min"), ("notes", "notes"), ("tokens", "tokens"),
           ("reasons", "reasons"))

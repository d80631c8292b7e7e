"""Headless commands for the data area: `check` (the Dataset pane unless --headless) and `prepare`.

Exit status, for scripts:
  0  done, and every file is usable (check: no file has an error; prepare: the store holds pieces)
  1  check only: done, but some files have errors (they are listed; the rest are usable)
  2  could not run (missing folder, bad config), with one sentence on stderr
  3  done, but nothing is usable: no MIDI file, or every file is broken (prepare: the store is empty)
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.markup import escape

from .console import console, err_console, fail, is_tty

EXIT_SOME_ERRORS = 1
EXIT_NOTHING_USABLE = 3
EXIT_CODES_HELP = ("Exit status: 0 every file usable, 1 some files have errors, 2 could not run, "
                   "3 nothing usable (no MIDI file, or every file broken).")


def scan_exit_code(summary: "ScanSummary") -> int:
    """The exit status of a finished check, from its summary (see the module docstring)."""
    errors = summary.status["error"]
    if summary.files == 0 or errors == summary.files:
        return EXIT_NOTHING_USABLE
    return EXIT_SOME_ERRORS if errors else 0


def _warn(text: str) -> None:
    err_console.print(f"[bold yellow]warning:[/] {escape(text)}", soft_wrap=True)

if TYPE_CHECKING:
    from engine.data.check import FileRecord, ScanSummary


class _Progress:
    """A rich progress bar on a terminal; plain lines (problem files and every tenth) otherwise."""

    def __init__(self, label: str):
        self.label = label
        self.live = is_tty()
        self._bar = None
        self._task = None
        self._next_line = 0

    def __enter__(self):
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn(f"[bold]{self.label}[/]"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console, transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=None, rate="")
        import time

        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False

    def __call__(self, done: int, total: int, record: "FileRecord") -> None:
        import time

        rate = done / max(1e-6, time.monotonic() - self._t0)
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total, rate=f"{rate:.1f} files/s")
            if record.status == "error":
                self._bar.console.print(f"[red]error[/] {escape(shown(record.path))}: {escape('; '.join(record.reasons))}")
            return
        if record.status != "ok":
            console.print(f"{record.status} {shown(record.path)}: {'; '.join(record.reasons)}", soft_wrap=True, markup=False)
        if done >= self._next_line or done == total:
            console.print(f"{self.label} {done}/{total} files ({rate:.1f} files/s)")
            self._next_line = done + max(1, total // 10)


def shown(path: str) -> str:
    """A file name on one line: a newline or other control character in it is written as an escape."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(path))


def _summary_table(summary: "ScanSummary") -> None:
    from rich.table import Table

    status = summary.status
    table = Table(title=f"{summary.files} MIDI files in {summary.root}", show_header=False, box=None)
    table.add_row("ok / warning / error", f"[green]{status['ok']}[/] / [yellow]{status['warning']}[/] / [red]{status['error']}[/]")
    table.add_row("music", f"{summary.hours:.2f} h, {summary.notes:,} notes, {summary.tokens:,} tokens")
    if summary.elapsed_s is not None:
        table.add_row("scan", f"{summary.elapsed_s:.1f} s with {summary.workers} worker(s)")
    console.print(table)
    if summary.reasons:
        reasons = Table("reason", "files", title="reasons, most frequent first", box=None)
        for item in summary.reasons[:12]:
            reasons.add_row(item.reason, str(item.files))
        console.print(reasons)


def _load_prepare_config(config: Optional[Path]):
    from engine.data.store import PrepareConfig

    try:
        return PrepareConfig.load(config) if config else PrepareConfig()
    except ValueError as exc:
        fail(str(exc))


def run_check(folder: Path, report: Optional[Path], workers: Optional[int], policy: str, timeout: float,
              config: Optional[Path]) -> None:
    from engine.data.check import ScanError, find_midi_files, scan
    from engine.data.tokenizer import TokenizerConfigError

    try:
        files = find_midi_files(folder)  # a bad folder fails here, before the workers start
    except ScanError as exc:
        fail(str(exc))
    if report is not None and report.is_dir():  # said before the scan, not after it
        fail(f"the report path {report} is a folder; give a file name such as {report / 'report.json'}")
    prep = _load_prepare_config(config)
    try:
        checks = prep.check_policy(piano_policy=policy or None, timeout_s=timeout or None)  # prepare's rule too
        # MidiTok (and the torch it imports) only when tokens are counted
        tokenizer_config = prep.tokenizer_for(checks).to_config() if checks.tokenize else None
        with _Progress("check") as progress:
            result = scan(folder, workers=workers or prep.workers, policy=checks, on_progress=progress,
                          tokenizer_config=tokenizer_config, paths=files)
    except (ScanError, TokenizerConfigError, ValueError) as exc:
        fail(str(exc))
    _summary_table(result.summary)
    if report:
        try:
            result.write(report)
        except OSError as exc:
            fail(f"cannot write the report to {report} ({exc.strerror or exc}); give a writable path")
        console.print(f"report written to {report}")
    code = scan_exit_code(result.summary)
    summary = result.summary
    if code == EXIT_NOTHING_USABLE:
        _warn(f"no usable MIDI file in {folder}: " + (
            "it holds no .mid/.midi/.kar file" if summary.files == 0 else
            f"all {summary.files} files have errors (see the reasons above); training needs at least one good file"))
    elif code == EXIT_SOME_ERRORS:
        _warn(f"{summary.status['error']} of {summary.files} files have errors and will be skipped by prepare.")
    raise typer.Exit(code)


def run_prepare(folder: Path, out: Optional[Path], config: Optional[Path], workers: Optional[int], policy: str = "") -> None:
    from engine.data.check import ScanError
    from engine.data.piano_policy import check_piano_policy
    from engine.data.store import StoreError, prepare, store_for
    from engine.data.tokenizer import TokenizerConfigError

    prep = _load_prepare_config(config)
    if workers:
        prep.workers = workers
    if policy:  # the same choice as check's; it is part of the tokenizer's config, so of the store's
        try:
            check_piano_policy(policy)
        except ValueError as exc:
            fail(str(exc))
        prep.tokenizer["piano_policy"] = policy
    try:
        out = out or store_for(folder, prep)
        with _Progress("prepare") as progress:
            result = prepare(folder, out, prep, on_progress=progress)
    except (ScanError, StoreError, TokenizerConfigError, ValueError) as exc:
        fail(str(exc))
    console.print(
        f"store {result.store}: {result.pieces} pieces, {result.tokens:,} tokens "
        f"(train {result.split['train']} / val {result.split['val']} pieces); "
        f"{result.tokenized} tokenized, {result.reused} unchanged, "
        + (f"{result.resumed} kept from a cancelled prepare, " if result.resumed else "")
        + f"{result.skipped} skipped; {result.elapsed_s:.1f} s",
        soft_wrap=True,
    )
    if result.pieces == 0:
        _warn(f"the store is empty: no usable MIDI file in {folder} ({result.skipped} skipped); "
              "run check on the folder to see why, and add good files.")
        raise typer.Exit(EXIT_NOTHING_USABLE)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""

    @app.command("check", epilog=EXIT_CODES_HELP)
    def check(
        ctx: typer.Context,
        folder: Optional[Path] = typer.Argument(None, help="Folder of MIDI files (.mid/.midi/.kar, searched recursively); default: the bundled demo corpus."),
        report: Optional[Path] = typer.Option(None, "--json", help="Write the JSON report here."),
        workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Worker processes (default: CPU cores, at most 8)."),
        policy: str = typer.Option("", "--policy", help="Which tracks are the piano: 'auto' (the piano tracks, else every pitched track; default), 'keyboard' (pianos, celesta, organs) or 'all' (every non-drum track)."),
        timeout: Optional[float] = typer.Option(None, "--timeout", min=0.0, help="Seconds one file may take before it is reported as hanging (default 30)."),
        config: Optional[Path] = typer.Option(None, "--config", help="data.toml with [tokenizer] and [check] settings."),
    ) -> None:
        """Check a folder of MIDI files: status, reasons and statistics per file, and a summary."""
        from engine.paths import CORPUS_DIR

        from ..cli import open_app, wants_app
        from ..requests import DatasetArgs

        folder = folder or CORPUS_DIR
        if wants_app(ctx):
            open_app(pane="dataset", args=DatasetArgs(folder=str(folder), report_json=str(report) if report else None,
                                                      workers=workers, policy=policy or None))
            return
        run_check(folder, report, workers, policy, timeout, config)

    @app.command("prepare", epilog="Exit status: 0 the store holds pieces, 2 could not run, 3 the store is empty "
                                   "(no usable MIDI file).")
    def prepare_cmd(
        folder: Optional[Path] = typer.Argument(None, help="Folder of MIDI files; default: the bundled demo corpus."),
        out: Optional[Path] = typer.Option(None, "--out", help="Token store folder (default: under .cache/pianomuse/stores)."),
        config: Optional[Path] = typer.Option(None, "--config", help="data.toml with [tokenizer], [check] and [split] settings."),
        workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Worker processes (default: CPU cores, at most 8)."),
        policy: str = typer.Option("", "--policy", help="Which tracks are the piano: 'auto' (the piano tracks, else every pitched track; default), 'keyboard' (pianos, celesta, organs) or 'all' (every non-drum track)."),
    ) -> None:
        """Tokenize the good files of a folder into a token store (incremental: unchanged files are skipped)."""
        from engine.paths import CORPUS_DIR

        run_prepare(folder or CORPUS_DIR, out, config, workers, policy)

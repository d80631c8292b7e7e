"""`pianomuse-tui [--headless] train`: train a model; the app's Train pane unless --headless.

On a terminal the run shows a live rich panel (step, loss, val loss, lr, tokens/s, grad norm,
memory, ETA); otherwise one plain line per logged event, which is what CI and log files want.
The first Ctrl-C (or SIGTERM) is answered at once: the run stops after the current step and saves;
a second one aborts without saving. Closing the terminal (SIGHUP) stops and saves the same way.
Exit status: 0 finished, 130 stopped by SIGINT/SIGTERM/SIGHUP/control file (after saving), 3 aborted
(e.g. too many non-finite steps), 2 bad input.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from .console import console, err_console, is_tty
from .console import fail as console_fail

if TYPE_CHECKING:
    from engine.metric_records import MetricRecord, TrainRecord, ValRecord
    from engine.train.request import TrainRequest


def fail(message: str, code: int = 2) -> "typer.Exit":
    """One sentence on stderr, never wrapped (logs and tests read it as one line), then exit."""
    console_fail(message, code, soft_wrap=True)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB"


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


FIRST_SIGNAL_NOTICE = "stopping after this step: the run saves a checkpoint, then exits (Ctrl-C again aborts without saving)"
SECOND_SIGNAL_NOTICE = "aborting now without saving; the last checkpoint on disk is kept"


@contextlib.contextmanager
def immediate_stop_notice(say):
    """Tell the user at once that Ctrl-C (or SIGTERM) was heard, even mid-step.

    The trainer's own handler only sets a flag, and Python runs handlers between bytecodes, so a
    long torch call kept the first Ctrl-C silent until the step ended. The interpreter's C-level
    handler writes each signal number to the wakeup fd straight away; a thread reading it says
    what will happen (the trainer does the stopping, with the same first/second meaning).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    done = threading.Event()

    def watch() -> None:
        heard = 0
        while not done.is_set():
            for signum in os.read(read_fd, 64):
                if signum in (signal.SIGINT, signal.SIGTERM) and not done.is_set():
                    heard += 1
                    say(FIRST_SIGNAL_NOTICE if heard == 1 else SECOND_SIGNAL_NOTICE)

    watcher = threading.Thread(target=watch, name="stop notice", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        done.set()
        os.write(write_fd, b"\0")  # wake the watcher so it ends
        watcher.join(timeout=1)
        os.close(write_fd)
        os.close(read_fd)


class TrainDisplay:
    """Turns the trainer's typed metrics records into a live rich panel (TTY) or plain lines."""

    def __init__(self, live: bool, rank0: bool = True):
        self.live_mode = live and rank0
        self.rank0 = rank0
        self.max_steps = 0
        self.step = 0
        self.tokens = 0
        self.last: TrainRecord | None = None
        self.val: ValRecord | None = None
        self.clock = None  # the engine's EtaClock, made on the first record (engine imports stay lazy)
        self._live = None

    def __enter__(self):
        if self.live_mode:
            from rich.live import Live

            self._live = Live(self._render(), console=console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(*exc)
        return False

    def eta(self) -> float | None:
        return self.clock.eta_s(self.max_steps) if self.clock is not None else None

    def _render(self):
        from rich.panel import Panel
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        r, v = self.last, self.val
        table = Table.grid(padding=(0, 2))
        for _ in range(4):
            table.add_column()
        table.add_row("step", f"{self.step}/{self.max_steps}", "loss", _fmt(r and r.loss, ".4f"))
        ema = f" (EMA {v.ema_val_loss:.4f})" if v and v.ema_val_loss is not None else ""
        table.add_row("val loss", _fmt(v and v.val_loss, ".4f") + ema, "bits/note", _fmt(v and v.bits_per_note, ".3f"))
        table.add_row("lr", _fmt(r and r.lr, ".2e"), "tokens/s", _fmt(r and r.tokens_per_s, ",.0f"))
        table.add_row("grad norm", _fmt(r and r.grad_norm, ".3f"), "memory",
                      f"{_fmt_bytes(r and r.mem_alloc)} (peak {_fmt_bytes(r and r.mem_peak)})")
        table.add_row("ETA", _fmt_eta(self.eta()), "tokens", f"{self.tokens:,}")
        bar = ProgressBar(total=max(self.max_steps, 1), completed=self.step)
        grid = Table.grid()
        grid.add_row(bar)
        grid.add_row(table)
        return Panel(grid, title="training", border_style="cyan")

    def __call__(self, record: MetricRecord) -> None:
        from engine.metric_records import AuditionRecord, CheckpointRecord, StatusRecord, TrainRecord, ValRecord

        if self.clock is None:
            from engine.rundir import EtaClock

            self.clock = EtaClock()
        self.clock.feed(record)
        match record:
            case StatusRecord(state="started" | "resumed"):
                self.max_steps, self.step, self.tokens = record.max_steps or 0, record.step, record.tokens
                self._print(
                    f"{record.state} run {record.run_dir} on {record.device} ({record.parameters or 0:,} parameters, "
                    f"wkv {record.wkv_backend}, {record.precision}, {record.train_samples} train / {record.val_samples} val samples)"
                )
            case TrainRecord():
                self.last, self.step, self.tokens = record, record.step, record.tokens
                if not self.live_mode:
                    self._print(
                        f"step {record.step}/{self.max_steps} loss {_fmt(record.loss, '.4f')} lr {_fmt(record.lr, '.2e')} "
                        f"grad_norm {_fmt(record.grad_norm, '.3f')} tokens/s {_fmt(record.tokens_per_s, ',.0f')} "
                        f"mem {_fmt_bytes(record.mem_alloc)} eta {_fmt_eta(self.eta())}"
                    )
            case ValRecord():
                self.val = record
                bpn = f" bits/note {record.bits_per_note:.3f}" if record.bits_per_note is not None else ""
                if record.ema_val_loss is not None:  # the moving average of the weights, validated beside them
                    bpn += f" ema_val_loss {record.ema_val_loss:.4f} ema_bits/note {_fmt(record.ema_bits_per_note, '.3f')}"
                self._print(f"step {record.step} val_loss {_fmt(record.val_loss, '.4f')}{bpn}")
            case AuditionRecord():
                self._print(f"step {record.step} audition {record.path or f'failed: {record.error}'}")
            case CheckpointRecord():
                self._print(f"step {record.step} checkpoint {record.path}")
            case StatusRecord():
                self._print(f"{record.state}: {record.message or ''}".rstrip(": "))
        if self._live is not None:
            self._live.update(self._render())

    def say(self, text: str) -> None:
        """A notice the user must see now (any thread): above the live panel, else on stderr."""
        from rich.text import Text

        if self._live is not None:
            self._live.console.print(Text(text, style="bold yellow"))  # a plain print would be drawn over
        else:
            err_console.print(Text(text, style="bold yellow"), soft_wrap=True)

    def _print(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text, highlight=False, markup=False)
        else:
            console.print(text, highlight=False, markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    from engine.train.config import PRESETS, documented_keys  # torch-free; the Train pane uses the same

    @app.command(
        "train",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        help="Train a model (defaults: the bundled corpus, the small preset on a GPU or the tiny one on a CPU). "
             "Extra --section.key VALUE options override the config.",
        epilog="Config keys worth knowing (set as --section.key VALUE): "
               + "; ".join(f"--{key}: {text}" for key, text in documented_keys()) + ".",
    )
    def train(
        ctx: typer.Context,
        config: Optional[Path] = typer.Option(None, "--config", help="TOML config file (applied over the preset)."),
        data: Optional[str] = typer.Option(None, "--data", help="MIDI folder or prepared token store (default: bundled corpus)."),
        preset: Optional[str] = typer.Option(None, "--preset", help=f"{' | '.join(PRESETS)} (default when no --config: small on a GPU, tiny on a CPU)."),
        run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Folder that holds run directories (default runs/)."),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps to train for."),
        device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda."),
        resume: Optional[str] = typer.Option(None, "--resume", help="auto (newest run in --run-dir) or a run/checkpoint path."),
        init_from: Optional[Path] = typer.Option(None, "--init-from", help="Checkpoint to fine-tune from (e.g. an official RWKV-7)."),
    ) -> None:
        from engine.train.config import ConfigError
        from engine.train.launch import parse_override_args
        from engine.train.request import TrainRequest

        from ..cli import open_app, wants_app
        from ..requests import TrainArgs

        try:
            overrides = parse_override_args(list(ctx.args))
        except ConfigError as exc:
            fail(str(exc))
        request = TrainRequest(preset=preset, config=str(config) if config else None, data=data,
                               run_root=str(run_dir) if run_dir else None, max_steps=max_steps, device=device,
                               resume=resume, init_from=str(init_from) if init_from else None, overrides=overrides)
        if wants_app(ctx):
            open_app(pane="train", args=TrainArgs(request))
            return
        run_headless(request)


def run_headless(request: TrainRequest) -> None:
    from engine.model.checkpoint import CheckpointError
    from engine.rundir import RunError
    from engine.train.config import ConfigError
    from engine.train.feed import DataError
    from engine.train.launch import apply_cpu_train_threads, default_preset, resume_note
    from engine.train.trainer import run_training

    if request.preset is None and request.config is None and not request.resume:
        choice = default_preset(request.device)
        request.preset = choice.name
        if choice.note and int(os.environ.get("RANK", "0")) == 0:
            console.print(choice.note, highlight=False, markup=False, soft_wrap=True)
    try:
        cfg = request.resolve()
    except (ConfigError, RunError) as exc:
        fail(str(exc))
    rank0 = int(os.environ.get("RANK", "0")) == 0
    apply_cpu_train_threads(cfg)
    note = resume_note(cfg)
    if note and rank0:
        console.print(note, highlight=False, markup=False, soft_wrap=True)
    display = TrainDisplay(live=is_tty(), rank0=rank0)
    notice = immediate_stop_notice(display.say) if rank0 else contextlib.nullcontext()
    try:
        with display, notice:
            result = run_training(cfg, on_metrics=display)
    except (ConfigError, RunError, CheckpointError, DataError) as exc:
        fail(str(exc))
    if rank0:
        if result.status in ("aborted", "interrupted"):
            err_console.print(f"[bold red]{result.status}:[/] {result.message}", soft_wrap=True, highlight=False)
        elif result.status == "stopped":
            console.print(f"{result.message}; resume with: pianomuse-tui --headless train --run-dir {result.run_dir} --resume auto",
                          highlight=False, markup=False, soft_wrap=True)
        else:
            console.print(f"done: {result.step} steps, {result.tokens:,} tokens; checkpoint {result.checkpoint}",
                          highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(result.exit_code)

"""Train pane: start, stop (saving), resume or attach to a run, and watch it live.

The run itself is the engine's (``engine.train``), in its own spawned process. This pane reads the
run directory the way any observer could (``engine.rundir``), so a run started here and one started
with ``pianomuse-tui --headless train`` in another terminal look the same.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, DataTable, Input, Label, Select, Static
from textual.worker import get_current_worker

from engine.rundir import (
    EtaClock, MetricsTail, RunFiles, audition_step, is_run_dir, newest_run, read_run_files, request_stop,
)
from engine.metric_records import AuditionRecord, StatusRecord, TrainRecord, ValRecord
from engine.train.config import PRESETS
from engine.train.request import TrainRequest

from ..messages import MetricsArrived, ResourceSample, RunEnded, RunLaunched, RunLocated, RunStarted
from ..requests import TrainArgs
from ..training_process import TrainingProcess, launch_problem
from ..widgets.loss_plot import LossPlot
from ..widgets.meters import MemoryMeter
from .common import PaneBase, fill_table, fmt_count, fmt_duration, one_sentence

SMOOTHING_STEPS = (0.0, 0.6, 0.9, 0.97)
POLL_S = 0.25


def _parse_overrides(text: str) -> list[str]:
    """``train.max_steps=20 eval.val_every=5`` -> ["train.max_steps=20", ...]; the engine checks values."""
    out = []
    for item in text.split():
        if "=" not in item.lstrip("-") or "." not in item.split("=", 1)[0]:
            raise ValueError(f"override {item!r} is not section.key=value (e.g. optim.lr=3e-4); fix it and retry")
        out.append(item.lstrip("-"))
    return out


# a checkpoint row has its validation loss; an audition row its musical score (pitch-class overlap
# with the real music, longest run copied from the training data)
ARTIFACT_COLUMNS = (("item", "item"), ("step", "step"), ("val_loss", "val loss"), ("score", "audition score"),
                    ("file", "file"))


@dataclass
class RunFilesRead(Message):
    """The run watcher read the run's config.toml and listed its checkpoints and auditions.

    ``tail`` names the watcher that read them: a replaced watcher's late reading is dropped.
    ``started``: the first reading since the watcher found the run.
    """

    files: RunFiles
    tail: MetricsTail
    started: bool = False


class TrainPane(PaneBase):
    BINDINGS = [
        Binding("n", "new_run", "New run"),
        Binding("r", "resume", "Resume"),
        Binding("a", "attach", "Attach"),
        Binding("x", "stop", "Stop (save)"),
        Binding("l", "log_scale", "Log y"),
        Binding("e", "smoothing", "EMA"),
        Binding("c", "focus_artifacts", "Checkpoints"),
        Binding("enter", "play_selected", "Play sample", show=False),
    ]
    COMMANDS_LIST = [
        ("Start a new run", "Train with the chosen data, preset/config and overrides", "new_run"),
        ("Resume the newest run", "Continue the newest run of the runs folder from its checkpoint", "resume"),
        ("Attach to a run directory", "Watch a run another process is writing (e.g. --headless train)", "attach"),
        ("Stop the run (save)", "Ask the run to save a checkpoint and exit", "stop"),
        ("Toggle log scale", "Log or linear loss axis", "log_scale"),
        ("Cycle EMA smoothing", "Smoothing of the train loss curve", "smoothing"),
        ("Go to the checkpoints", "Move to the checkpoint and audition table (enter plays or picks)", "focus_artifacts"),
        ("Play the selected audition", "Play the audition sample through the Generate pane's output", "play_selected"),
    ]

    def __init__(self, args: TrainArgs | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.args = args or TrainArgs()
        self.proc: TrainingProcess | None = None
        self._launcher = None  # the worker checking paths and spawning a run, until it answers
        self.run_dir: Path | None = None
        self.attached = False
        self.tail: MetricsTail | None = None
        self.run_files: RunFiles | None = None  # the watcher's latest reading of the run's folder
        self.last_train: TrainRecord | None = None  # the newest training step, and validation
        self.last_val: ValRecord | None = None
        self.max_steps: int | None = None
        self.records_seen = 0
        self.last_status = ""
        self.val_by_step: dict[int, float] = {}
        self.audition_scores: dict[int, str] = {}  # step -> the trainer's musical score of that audition
        self.eta_clock = EtaClock()

    def compose(self) -> ComposeResult:
        request = self.args.request
        overrides = " ".join(request.overrides)
        for value, key in ((request.max_steps, "train.max_steps"), (request.device, "train.device"), (request.init_from, "init_from")):
            if value:
                overrides = f"{overrides} {key}={value}".strip()
        # blank = the headless default, chosen when the run starts: small on a GPU, tiny on a CPU
        preset = request.preset or Select.NULL
        with Horizontal(classes="toolbar"):
            yield Label("Data", classes="field-label")
            yield Input(request.data or "", placeholder="bundled corpus", id="tr-data")
            yield Select([(p, p) for p in PRESETS], value=preset, id="tr-preset", allow_blank=True,
                         prompt="preset: auto")
            yield Input(request.config or "", placeholder="config.toml (optional)", id="tr-config")
        with Horizontal(classes="toolbar"):
            yield Label("Runs", classes="field-label")
            yield Input(request.run_root or "runs", id="tr-runs",
                        placeholder="runs folder, or a run directory to attach to")
            yield Input(overrides, placeholder="overrides: train.max_steps=200 optim.lr=3e-4", id="tr-overrides")
            yield Button("New", id="tr-new", variant="primary")
            yield Button("Resume", id="tr-resume")
            yield Button("Attach", id="tr-attach")
            yield Button("Stop", id="tr-stop", variant="error", disabled=True)
        yield Static("no run: press n to start one, a to attach", id="tr-status")
        with Horizontal(id="tr-body", classes="body"):
            with Vertical(id="tr-left"):
                yield LossPlot(id="tr-loss", classes="panel")
                yield DataTable(id="tr-ckpts", cursor_type="row", classes="panel")
            with Vertical(id="tr-right"):
                yield Static("", id="tr-now", classes="panel")
                yield MemoryMeter(id="tr-mem", classes="panel")

    def on_mount(self) -> None:
        self.query_one("#tr-now").border_title = "Now"
        self.query_one("#tr-mem").border_title = "Memory"
        table = self.query_one("#tr-ckpts", DataTable)
        table.border_title = "Checkpoints / auditions (c goes here, enter plays)"
        fill_table(table, ARTIFACT_COLUMNS, [])
        self._render_now()
        args = self.args
        if args.attach:
            self.call_after_refresh(self.attach, Path(args.attach))
        elif args.request.resume:
            self.call_after_refresh(self.action_resume)
        elif args.start or args.request.preset or args.request.config:
            self.call_after_refresh(self.action_new_run)

    def focus_main(self) -> None:
        self.query_one("#tr-ckpts", DataTable).focus()

    # ---- state ----------------------------------------------------------------------------------

    @property
    def owns_active_run(self) -> bool:
        """Our own run is going, or being launched (quitting must wait for it and stop it)."""
        return self._launcher is not None or (self.proc is not None and self.proc.alive)

    def watched_pids(self) -> list[int]:
        import os

        pids = [os.getpid()]
        if self.proc is not None and self.proc.alive and self.proc.pid:
            pids.append(self.proc.pid)
        return pids

    def _spec(self, resume: str | None = None) -> TrainRequest:
        preset = self.query_one("#tr-preset", Select).value
        config = self.query_one("#tr-config", Input).value.strip() or None
        return TrainRequest(
            preset=None if preset is Select.NULL else str(preset),
            config=config,
            data=self.query_one("#tr-data", Input).value.strip() or None,
            run_root=self.query_one("#tr-runs", Input).value.strip() or "runs",
            resume=resume,
            overrides=_parse_overrides(self.query_one("#tr-overrides", Input).value),
        )

    def data_prepared(self, store: Path | None) -> None:
        """The Dataset pane built a store: offer it as this pane's data."""
        if store is not None and not self.owns_active_run:
            self.query_one("#tr-data", Input).value = str(store)

    # ---- actions --------------------------------------------------------------------------------

    @on(Button.Pressed, "#tr-new")
    def action_new_run(self) -> None:
        self._start(resume=None)

    @on(Button.Pressed, "#tr-resume")
    def action_resume(self) -> None:
        self._start(resume=self.args.request.resume or "auto")

    def _start(self, resume: str | None) -> None:
        if self.owns_active_run:
            self.notify("A run is already going; stop it first with x.", severity="warning")
            return
        try:
            spec = self._spec(resume)
        except ValueError as exc:
            self.notify(str(exc), severity="error")
            return
        self._launcher = self._launch(spec)
        self._set_status(f"starting ({'resume ' + resume if resume else spec.preset or spec.config or 'default preset'})…")
        self._set_buttons()

    @work(thread=True, group="train-launch", exit_on_error=False, name="run launcher")
    def _launch(self, spec: TrainRequest) -> TrainingProcess | None:
        """Check the paths and spawn the run here, off the UI thread (all of it touches the disk)."""
        problem = launch_problem(spec)
        if problem is not None:
            self.post_message(RunLaunched(spec, None, problem))
            return None
        if spec.preset is None and spec.config is None and not spec.resume:
            from engine.train.launch import default_preset  # imports torch: off the UI thread

            choice = default_preset(spec.device)
            spec.preset = choice.name
            if choice.note:
                self.app.call_from_thread(self.notify, choice.note, title="preset", timeout=8)
        try:
            proc = TrainingProcess(spec)
            proc.start()
        except Exception as exc:  # noqa: BLE001 - e.g. the runs folder cannot be created
            self.post_message(RunLaunched(spec, None, f"The run could not start: {one_sentence(exc)}"))
            return None
        self.post_message(RunLaunched(spec, proc))
        return proc

    def on_run_launched(self, message: RunLaunched) -> None:
        self._launcher = None
        if message.error is not None:
            self.notify(message.error, severity="error")
            self._set_status(f"not started: {message.error}")
            self._set_buttons()
            return
        self._detach()
        self.proc = message.process
        self.attached = False
        self._reset_view()
        self._set_buttons()
        self._watch(self.proc, None)

    @on(Button.Pressed, "#tr-attach")
    def action_attach(self) -> None:
        self.attach(Path(self.query_one("#tr-runs", Input).value.strip() or "runs"), newest=True)

    def attach(self, target: Path, newest: bool = False) -> None:
        """Watch the run directory ``target`` (``newest``: or the newest run in that folder)."""
        if self.owns_active_run:
            self.notify("This app's own run is going; stop it before attaching to another.", severity="warning")
            return
        self._locate(Path(target), newest)

    @work(thread=True, exclusive=True, group="train-locate", exit_on_error=False, name="run finder")
    def _locate(self, target: Path, newest: bool) -> None:
        if is_run_dir(target):
            self.post_message(RunLocated(target))
        elif newest and (run := newest_run(target)) is not None:
            self.post_message(RunLocated(run))
        elif newest:
            self.post_message(RunLocated(None, f"No run directory at {target}; type a run folder "
                                               "(with metrics.jsonl) in Runs."))
        else:
            self.post_message(RunLocated(None, f"{target} is not a run directory (no metrics.jsonl or config.toml)."))

    def on_run_located(self, message: RunLocated) -> None:
        if message.run_dir is None:
            self.notify(message.error or "No run directory found.", severity="error")
            return
        if self.owns_active_run:  # a run was started while the folder was being looked at
            return
        self._detach()
        self.attached = True
        self._reset_view()
        self._set_buttons()
        self._watch(None, message.run_dir)

    @on(Button.Pressed, "#tr-stop")
    def action_stop(self) -> None:
        if self.proc is not None and self.proc.alive:
            self._ask_to_stop(self.proc, None)
            self._set_status("stopping: the run saves a checkpoint at the next step…")
        elif self.attached and self.run_dir is not None:
            # attached runs are someone else's: stopping one is explicit, and goes through its control file
            self._ask_to_stop(None, self.run_dir)
            self._set_status(f"asked {self.run_dir.name} to save and stop (control/stop)")
        else:
            self.notify("No run to stop.")

    @work(thread=True, group="train-stop", exit_on_error=False, name="stop request")
    def _ask_to_stop(self, proc: TrainingProcess | None, run_dir: Path | None) -> None:
        # creating control/stop (and finding the run folder first) touches the disk: not on the UI thread
        if proc is not None:
            proc.request_stop()
        elif run_dir is not None:
            request_stop(run_dir)

    def action_focus_artifacts(self) -> None:
        self.query_one("#tr-ckpts", DataTable).focus()

    def action_log_scale(self) -> None:
        plot = self.query_one(LossPlot)
        plot.log_y = not plot.log_y

    def action_smoothing(self) -> None:
        plot = self.query_one(LossPlot)
        later = [s for s in SMOOTHING_STEPS if s > plot.smoothing + 1e-9]
        plot.smoothing = later[0] if later else SMOOTHING_STEPS[0]

    @on(DataTable.RowSelected, "#tr-ckpts")
    def _row_selected(self) -> None:
        # the table takes enter for itself; selecting a row is the same "play it" gesture
        self.action_play_selected()

    def action_play_selected(self) -> None:
        table = self.query_one("#tr-ckpts", DataTable)
        if not table.row_count:
            self.notify("No audition yet; the trainer writes one every eval.audition_every steps.")
            return
        key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
        path = Path(str(key))
        if path.suffix == ".pth":
            self.app.generate.use_checkpoint(path)
            self.app.action_show_pane("generate")
            self.notify(f"Checkpoint {path.parent.name} selected in the Generate pane.")
            return
        self.app.generate.play_file(path)

    # ---- the watcher: one thread per run, polling like dolphie's refresh worker -----------------

    def _detach(self) -> None:
        self.workers_cancel()
        self.tail = None

    def workers_cancel(self) -> None:
        for worker in list(self.app.workers):
            if worker.group == "train-watch":
                worker.cancel()

    @work(thread=True, exclusive=True, group="train-watch", exit_on_error=False, name="run watcher")
    def _watch(self, proc: TrainingProcess | None, run_dir: Path | None) -> None:
        worker = get_current_worker()
        tail: MetricsTail | None = None
        files: RunFiles | None = None
        artifacts_seen = records_counted = 0
        while not worker.is_cancelled:
            if proc is not None and run_dir is None:
                run_dir = proc.find_run_dir()
            if run_dir is not None and tail is None:
                tail = MetricsTail(run_dir)
                self.tail = tail
            if tail is not None:
                started = files is None
                waiting = tail.poll()
                # the run's files are read here, never on the UI thread: when the run is found, when
                # a checkpoint or an audition is logged, and on new records while the config (which
                # the trainer writes after it starts) has not given max_steps yet
                read = (started or tail.artifact_records != artifacts_seen
                        or (tail.records_read != records_counted and files.max_steps is None))
                artifacts_seen, records_counted = tail.artifact_records, tail.records_read
                if read:
                    files = read_run_files(run_dir)
                if started:
                    self.post_message(RunStarted(run_dir, attached=proc is None))
                if waiting:
                    self.post_message(MetricsArrived(run_dir, len(tail.pending)))
                if read:  # after the records, so the checkpoint table shows their scores
                    self.post_message(RunFilesRead(files, tail, started))
            if proc is not None:
                error = proc.poll_error()
                if not proc.alive:
                    if tail is not None:
                        if tail.poll():
                            self.post_message(MetricsArrived(run_dir, len(tail.pending)))
                        # the last checkpoint, saved as the run stopped, is in the listing RunEnded reports
                        self.post_message(RunFilesRead(read_run_files(run_dir), tail))
                    code = proc.exit_code
                    if error is None and code not in (0, 130, None):
                        error = (f"the training process exited with code {code}; see {proc.log_path} "
                                 f"for details").strip()
                    self.post_message(RunEnded(run_dir, code, error))
                    return
            time.sleep(POLL_S)

    def on_run_started(self, message: RunStarted) -> None:
        self.run_dir = message.run_dir
        self.query_one(LossPlot).border_subtitle = str(message.run_dir)
        # the model line and the checkpoints follow in the watcher's RunFilesRead
        self._set_status(f"{'attached to' if message.attached else 'running'} {message.run_dir}")

    def on_run_files_read(self, message: RunFilesRead) -> None:
        if message.tail is not self.tail:
            return
        files = message.files
        self.run_files = files
        if message.started or self.max_steps is None:
            self.max_steps = files.max_steps
            self._set_status(f"{'attached to' if self.attached else 'running'} {files.run_dir}  {files.model_line}")
            self._render_now()
        self._refresh_artifacts()

    def on_metrics_arrived(self, message: MetricsArrived) -> None:
        tail = self.tail
        if tail is None or tail.run_dir != message.run_dir:
            return
        records = tail.drain()
        if not records:
            return
        self.records_seen += len(records)
        train_pts, val_pts = [], []
        plot = self.query_one(LossPlot)
        for rec in records:
            self.eta_clock.feed(rec)
            if rec.resumed_at is not None:  # the steps after it will be trained again: drop them
                plot.add(train_pts, val_pts)
                train_pts, val_pts = [], []
                plot.cut_after(rec.resumed_at)
                self.val_by_step = {s: v for s, v in self.val_by_step.items() if s <= rec.resumed_at}
            match rec:
                case TrainRecord() if rec.loss is not None:
                    train_pts.append((rec.step, rec.loss))
                    self.last_train = rec
                case ValRecord():
                    if rec.val_loss is not None:
                        val_pts.append((rec.step, rec.val_loss))
                        self.val_by_step[rec.step] = rec.val_loss
                    self.last_val = rec
                case AuditionRecord() if rec.pitch_class_oa is not None:
                    copied = rec.copied_notes if rec.copied_notes is not None else "-"
                    reuse = f", reuse {rec.self_reuse:.2f}" if rec.self_reuse is not None else ""
                    self.audition_scores[rec.step] = f"pc OA {rec.pitch_class_oa:.2f}, copy {copied}{reuse}"
                case StatusRecord():
                    self.last_status = rec.state
                    if rec.message:
                        self.notify(rec.message, title="trainer")
        plot.add(train_pts, val_pts)
        self._render_now()
        self.query_one(MemoryMeter).update_trainer(self.last_train)
        # a checkpoint or audition record brings a RunFilesRead right behind it: the table is
        # refreshed there, from the watcher's listing

    def on_run_ended(self, message: RunEnded) -> None:
        self._set_buttons()
        if message.error:
            self._set_status(f"run failed: {message.error}")
            self.notify(message.error, title="training stopped", severity="error", timeout=10)
        else:
            files = self.run_files
            # the watcher listed the run's folder just before it reported the end
            ckpts = files.checkpoints if files is not None and message.run_dir == files.run_dir else []
            saved = f"; last checkpoint {ckpts[0].name}" if ckpts else ""
            # 130 is the trainer's "stopped as asked, after saving" (x, Ctrl+Q, control/stop), not a crash
            how = {0: "run finished", 130: "run stopped and saved"}.get(message.exit_code,
                                                                       f"run ended (exit {message.exit_code})")
            self._set_status(f"{how}{saved}  {message.run_dir or ''}")

    def show_resources(self, sample: ResourceSample) -> None:
        meters = self.query(MemoryMeter)  # empty while the app is closing
        if not meters:
            return
        meters.first().update_machine(sample)

    # ---- drawing --------------------------------------------------------------------------------

    def _reset_view(self) -> None:
        self.last_train = self.last_val = None
        self.eta_clock = EtaClock()
        self.val_by_step = {}
        self.audition_scores = {}
        self.records_seen = 0
        self.run_dir = None
        self.run_files = None
        self.query_one(LossPlot).clear()
        self.query_one("#tr-ckpts", DataTable).clear()
        self._render_now()

    def _set_buttons(self) -> None:
        running = self.owns_active_run
        self.query_one("#tr-stop", Button).disabled = not (running or self.attached)
        for name in ("#tr-new", "#tr-resume", "#tr-attach"):
            self.query_one(name, Button).disabled = running

    def _set_status(self, text: str) -> None:
        self.query_one("#tr-status", Static).update(text)

    def _render_now(self) -> None:
        t, v = self.last_train, self.last_val
        text = Text()
        total = f" / {self.max_steps:,}" if self.max_steps else ""
        text.append(f"step {t.step if t else '-'}{total}\n", style="bold")
        text.append(f"loss {_num(t and t.loss)}   val {_num(v and v.val_loss)}\n")
        if v and v.ema_val_loss is not None:  # train.ema_decay: the averaged weights, validated beside them
            text.append(f"val of the weight average (EMA) {_num(v.ema_val_loss)}\n")
        if v and v.bits_per_note is not None:
            text.append(f"bits/note {_num(v.bits_per_note)}\n")
        text.append(f"lr {_sci(t and t.lr)}   grad {_num(t and t.grad_norm)}\n")
        text.append(f"{fmt_count(t and t.tokens_per_s)} tok/s   ETA {self._eta()}\n")
        if t:
            text.append(f"tokens seen {fmt_count(t.tokens)}\n", style="dim")
        if self.last_status:
            text.append(f"trainer: {self.last_status}", style="dim")
        self.query_one("#tr-now", Static).update(text)

    def _eta(self) -> str:
        if self.last_status in StatusRecord.ENDED:
            return "-"
        eta = self.eta_clock.eta_s(self.max_steps)
        return fmt_duration(eta) if eta is not None and math.isfinite(eta) else "-"

    def _refresh_artifacts(self) -> None:
        files = self.run_files
        if files is None:
            return
        table = self.query_one("#tr-ckpts", DataTable)
        selected = table.cursor_row
        rows = []
        for ckpt in files.checkpoints:
            val = self.val_by_step.get(ckpt.step)
            rows.append((str(ckpt.path), ("checkpoint", ckpt.step if ckpt.step is not None else "-",
                                          f"{val:.3f}" if val is not None else "", "", ckpt.name)))
        for audition in files.auditions:
            step = audition_step(audition)
            rows.append((str(audition), ("audition ▶", step if step is not None else "-", "",
                                         self.audition_scores.get(step, ""), audition.name)))
        fill_table(table, ARTIFACT_COLUMNS, rows)
        if table.row_count:
            table.move_cursor(row=min(selected, table.row_count - 1))

    # ---- quitting -------------------------------------------------------------------------------

    async def shutdown(self, timeout: float = 60.0) -> None:
        """Stop our own run cleanly (it saves), wait for it, then make sure nothing is left."""
        import asyncio

        self.workers_cancel()
        proc = self.proc
        launcher = self._launcher
        if launcher is not None:  # a run being spawned right now is ours too
            try:
                await launcher.wait()
            except Exception:  # noqa: BLE001 - a failed launch left no process
                pass
            proc = proc or launcher.result
        if proc is None:
            return
        if proc.alive:
            await asyncio.to_thread(proc.request_stop)
            deadline = time.monotonic() + timeout
            while proc.alive and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        await asyncio.to_thread(proc.kill)


def _num(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"


def _sci(v: Any) -> str:
    return f"{v:.2e}" if isinstance(v, (int, float)) else "-"

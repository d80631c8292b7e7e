"""The PianoMuse terminal app: three panes (Dataset, Train, Generate) over the engine's APIs.

The app owns no engine logic. Long work happens elsewhere and reports back with typed messages
(``messages.py``): scans and preparation in thread workers, training in its own process (watched
through its run directory), generation in a worker beside the scheduler's sender thread.
"""
from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Header, Label, Markdown, TabbedContent, TabPane
from textual.notifications import Notify
from textual.worker import Worker, WorkerState

from . import resources
from .messages import DeviceDetected, ResourceSample
from .panes.common import one_sentence
from .panes.dataset import DatasetPane
from .panes.generate import GeneratePane
from .panes.train import TrainPane
from .requests import PaneArgs
from .training_process import kill_all_training

PANES = {"dataset": "Dataset", "train": "Train", "generate": "Generate"}
# CLI command names that open a pane
PANE_ALIASES = {"check": "dataset", "prepare": "dataset", "data": "dataset", "train": "train",
                "generate": "generate", "play": "generate"}


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no question, the keys on screen: y says yes; n, escape and enter say no.

    Enter is the safe answer: it presses the focused No button, so a stray enter keeps going.
    """

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, yes: str = "Yes", no: str = "No") -> None:
        super().__init__()
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Label(self.question, id="confirm-question")
            with Horizontal(id="confirm-buttons"):
                yield Button(f"{self.yes} (y)", variant="error", id="confirm-yes")
                yield Button(f"{self.no} (n, enter)", variant="primary", id="confirm-no")
            yield Label(f"y: {self.yes.lower()}    n, esc or enter: {self.no.lower()}", id="confirm-keys")

    def on_mount(self) -> None:
        self.query_one("#confirm-no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm-yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


HELP_TEXT = """\
# PianoMuse

Three panes: **Dataset** (check a folder of MIDI files, prepare training data), **Train** (start,
stop, resume or attach to a run and watch it), **Generate** (play a model live to a MIDI port).

| key | anywhere |
|---|---|
| `F1` `F2` `F3` | Dataset, Train, Generate pane |
| `ctrl+p` | command palette: every action by name |
| `?` | this help |
| `ctrl+q` | quit (asks first while a run or a performance is active) |

| key | Dataset |
|---|---|
| `s` | scan the folder (progress bar; `escape` cancels) |
| `p` | prepare the token store from the folder |
| `/` | filter the file table; click a column header to sort |
| `o` | change the folder |

| key | Train |
|---|---|
| `n` | start a new run with the chosen data and preset/config |
| `r` | resume the newest run in the runs folder |
| `a` | attach to a run directory (also one `--headless train` writes) |
| `x` | stop the run (it saves a checkpoint first) |
| `l` / `e` | log-scale toggle / cycle the EMA smoothing of the loss plot |
| `c` | go to the checkpoint and audition table |
| `enter` | play the selected audition sample (or pick the checkpoint for the Generate pane) |

| key | Generate |
|---|---|
| `space` | play / stop (anywhere in the pane but a text field) |
| `!` | panic: release every note now |
| `f` | start FluidSynth and play through it |
| `R` | refresh the port list |
| `w` | save the session as MIDI; with nothing played, write a take to takes/ without playing |
| `+` `-` / `[` `]` | temperature / top-p (take effect on the next tokens) |

Errors show as notifications with one sentence saying what to do; nothing already done is lost.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Markdown(HELP_TEXT)

    def action_dismiss(self, result: Any = None) -> None:
        self.dismiss(None)


class PianoMuseApp(App):
    """Dataset checks, a live training monitor and live generation in one terminal UI."""

    TITLE = "PianoMuse"
    SUB_TITLE = "detecting device…"
    CSS_PATH = "app.tcss"
    # panels stack below this width (the 100x30 layout)
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]

    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("question_mark", "help", "Help"),
        Binding("f1", "show_pane('dataset')", "Dataset", show=False),
        Binding("f2", "show_pane('train')", "Train", show=False),
        Binding("f3", "show_pane('generate')", "Generate", show=False),
    ]

    def __init__(self, pane: str | None = None, args: PaneArgs | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        # Textual swaps sys.stderr for a capture whose fileno() is -1 while the app runs, and
        # multiprocessing hands sys.stderr's fd to the resource tracker the first time anything is
        # spawned (scan workers, the training process): start the tracker now, with the real one.
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
        pane = PANE_ALIASES.get(pane or "", pane)
        self.initial_pane = pane if pane in PANES else "dataset"
        self.pane_args = args  # the record of the pane it opens on (DatasetArgs, TrainArgs or GenerateArgs)
        self.device = "detecting device…"
        self._quitting = False

    # ---- layout ---------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="♪")
        args = self.pane_args
        # kept by reference: App.query_one searches the current screen, which is a dialog at times
        self._dataset = DatasetPane(args if self.initial_pane == "dataset" else None, id="dataset-pane")
        self._train = TrainPane(args if self.initial_pane == "train" else None, id="train-pane")
        self._generate = GeneratePane(args if self.initial_pane == "generate" else None, id="generate-pane")
        with TabbedContent(initial=self.initial_pane, id="panes"):
            with TabPane("Dataset", id="dataset"):
                yield self._dataset
            with TabPane("Train", id="train"):
                yield self._train
            with TabPane("Generate", id="generate"):
                yield self._generate
        yield Footer()

    def on_mount(self) -> None:
        self._detect_device()
        self.set_interval(1.0, self._sample_resources)
        self.call_after_refresh(self._focus_pane, self.initial_pane)

    @property
    def dataset(self) -> DatasetPane:
        return self._dataset

    @property
    def train(self) -> TrainPane:
        return self._train

    @property
    def generate(self) -> GeneratePane:
        return self._generate

    def pane(self, name: str):
        return {"dataset": self.dataset, "train": self.train, "generate": self.generate}[name]

    def action_show_pane(self, name: str) -> None:
        self.screen_stack[0].query_one("#panes", TabbedContent).active = name
        self._focus_pane(name)

    def _focus_pane(self, name: str) -> None:
        # a late request (the start-up pane's, delivered after the user pressed F3) must not pull
        # focus into a pane that is no longer shown: TabbedContent would switch back to it
        if self.screen_stack[0].query_one("#panes", TabbedContent).active == name:
            self.pane(name).focus_main()

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id in PANES:
            self.call_after_refresh(self._focus_pane, event.pane.id)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    # ---- device and machine readouts ------------------------------------------------------------

    @work(thread=True, exclusive=True, group="device", exit_on_error=False)
    def _detect_device(self) -> None:
        self.post_message(DeviceDetected(resources.device_label()))

    def on_device_detected(self, message: DeviceDetected) -> None:
        self.device = message.label
        self.sub_title = message.label

    def _sample_resources(self) -> None:
        self._resource_worker(self.train.watched_pids())

    @work(thread=True, exclusive=True, group="resources", exit_on_error=False)
    def _resource_worker(self, pids: list[int]) -> None:
        self.post_message(ResourceSample(**resources.sample(pids)))

    def on_resource_sample(self, message: ResourceSample) -> None:
        if self.train.is_mounted:
            self.train.show_resources(message)

    # ---- notifications --------------------------------------------------------------------------

    @on(Notify)
    def _repaint_after_the_toast(self, event: Notify) -> None:
        # Textual removes an expired toast from the screen but may not repaint where it was: when a
        # widget of a hidden pane (the Train pane's panels refresh every second) was refreshed in the
        # same frame, the compositor rebuilds its map before comparing, loses the toast's region,
        # and the terminal kept showing the toast over the Generate pane's Timing panel for minutes.
        self.set_timer(event.notification.timeout + 0.2, self._repaint_screen)

    def _repaint_screen(self) -> None:
        # a timer's callback runs until the app stops its timers, which is after the screens are
        # gone when Pilot ends the app (and on a busy machine there is time for it to come due)
        if self.screen_stack:
            self.screen.refresh()

    # ---- errors from any worker: one handler, as notifications ----------------------------------

    @on(Worker.StateChanged)
    def _worker_failed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            self.notify(one_sentence(event.worker.error), title=f"{event.worker.name} failed",
                        severity="error", timeout=8)

    # ---- command palette ------------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for name, label in PANES.items():
            yield SystemCommand(f"Show {label} pane", f"Switch to the {label} pane",
                                partial(self.action_show_pane, name))
        for name in PANES:
            pane = self.pane(name)
            for title, help_text, action in pane.COMMANDS_LIST:
                yield SystemCommand(f"{PANES[name]}: {title}", help_text,
                                    partial(self._run_pane_action, name, action))
        yield SystemCommand("Help", "Show the keys of every pane", self.action_help)
        yield from super().get_system_commands(screen)

    async def _run_pane_action(self, name: str, action: str) -> None:
        self.action_show_pane(name)
        await self.pane(name).run_action(action)

    # ---- quitting -------------------------------------------------------------------------------

    def busy_activities(self) -> list[str]:
        """What quitting would interrupt, in words."""
        busy = []
        if self.train.owns_active_run:
            busy.append("a training run")
        if self.generate.performing:
            busy.append("a performance")
        if self.dataset.busy:
            busy.append("a dataset job")
        return busy

    async def action_quit(self) -> None:
        if self._quitting:
            return
        busy = self.busy_activities()
        if not busy:
            await self._shutdown_and_exit()
            return
        what = " and ".join(busy)
        question = f"{what[0].upper()}{what[1:]} {'is' if len(busy) == 1 else 'are'} active. Stop (saving) and quit?"

        async def answered(yes: bool | None) -> None:
            if yes:
                await self._shutdown_and_exit()

        self.push_screen(ConfirmScreen(question, yes="Stop and quit", no="Keep going"), answered)

    async def _shutdown_and_exit(self) -> None:
        self._quitting = True
        if self.generate.performing or self.train.owns_active_run:
            self.notify("Stopping cleanly…", timeout=3)
        await self.stop_everything()
        self.exit()

    async def stop_everything(self) -> None:
        """Stop the performance (notes released) and our own training run (saved); idempotent."""
        await self.generate.shutdown()
        self.dataset.shutdown()
        await self.train.shutdown()


def run_app(pane: str | None, args: PaneArgs | None) -> None:
    """Entry point used by ``pianomuse_tui.cli``: open the app, optionally on a pane with its args."""
    app = PianoMuseApp(pane=pane, args=args)
    try:
        app.run()
    finally:
        # belt and braces: however the app ended, no training child is left behind
        kill_all_training()

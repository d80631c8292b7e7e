"""Generate pane: pick a checkpoint, a prompt and the knobs, pick a MIDI output, and play live.

The model, the sampler and the real-time scheduler are the engine's (``engine.generate``,
``engine.midi``). ``performance.Performance`` wires them together in a worker thread; the
scheduler's own sender thread times the notes. This pane shows what is played (the piano roll fed
by the performance) and what is buffered ahead, and the scheduler's telemetry.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Button, Checkbox, Input, Label, Select, Static
from textual.worker import get_current_worker

from engine.generate.defaults import HUMAN_CHANNEL, MODES, TAKEBACKS, DuetConfig, KnobSettings, duet_config, tempo_from_taps
from engine.generate.performance import (
    Knobs,
    OutputChoice,
    Performance,
    PerformanceSettings,
    PerformanceTelemetry,
    default_checkpoint,
)

from ..messages import PerformanceEnded, PerformanceProgress, PerformanceStarted, PortsListed, TakeWritten
from ..requests import GenerateArgs
from ..widgets.meters import bar
from ..widgets.piano_roll import PianoRoll
from .common import PaneBase, one_sentence

APIS = ("auto", "alsa", "jack")
VIRTUAL = "__virtual__"
FLUIDSYNTH = "__fluidsynth__"
BUILTIN = "__builtin__"
NO_INPUT = "__none__"
VIRTUAL_INPUT = "virtual"
OWN_INPUTS = [("no input (the model plays alone)", NO_INPUT), ("virtual input 'PianoMuse in'", VIRTUAL_INPUT)]
OWN_OUTPUTS = [("virtual port 'PianoMuse'", VIRTUAL), ("built-in piano", BUILTIN), ("start FluidSynth", FLUIDSYNTH)]
# what the knob fields accept; the +/- and [/] nudges stay inside the same bounds
KNOB_RANGES = {"temperature": (0.05, 3.0), "top_p": (0.05, 1.0)}
TAP_RESET_S = 3.0  # a tap this long after the last one starts a new tempo (20 quarter notes per minute)


def _bounded(text: str, name: str, low: float, high: float, kind: type = float) -> Any:
    """``text`` read as a ``kind`` (float or int) within [low, high], or a ValueError sentence."""
    try:
        value = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{name} must be {what} between {low} and {high}") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


class GeneratePane(PaneBase):
    BINDINGS = [
        # priority: space plays and stops from anywhere in the pane, a closed dropdown included
        # (check_action hands it back to a text field, where it types a space)
        Binding("space", "toggle_play", "Play/stop", priority=True),
        Binding("exclamation_mark", "panic", "Panic"),
        Binding("f", "fluidsynth", "FluidSynth"),
        Binding("R", "refresh_ports", "Ports"),
        Binding("w", "save", "Save MIDI"),
        Binding("t", "tap_tempo", "Tap tempo", show=False),
        Binding("plus", "nudge('temperature', 0.05)", "Temp+", show=False),
        Binding("minus", "nudge('temperature', -0.05)", "Temp-", show=False),
        Binding("right_square_bracket", "nudge('top_p', 0.02)", "top-p+", show=False),
        Binding("left_square_bracket", "nudge('top_p', -0.02)", "top-p-", show=False),
    ]
    COMMANDS_LIST = [
        ("Play / stop", "Start or stop the live performance", "toggle_play"),
        ("Panic", "Release every sounding note now", "panic"),
        ("Start FluidSynth", "Launch FluidSynth with the GM soundfont and play through it", "fluidsynth"),
        ("Refresh MIDI ports", "List the output ports of the chosen MIDI API again", "refresh_ports"),
        ("Save session as MIDI", "Write what was played to a .mid file (every alternative, one file each)", "save"),
        ("Tap tempo", "Press t a few times on the beat: the duet's tempo field shows the tempo you tapped", "tap_tempo"),
        ("Temperature up", "Hotter sampling from the next token on", "nudge('temperature', 0.05)"),
        ("Temperature down", "Cooler sampling from the next token on", "nudge('temperature', -0.05)"),
        ("Top-p up", "Sample from more of the distribution from the next token on", "nudge('top_p', 0.02)"),
        ("Top-p down", "Sample from less of the distribution from the next token on", "nudge('top_p', -0.02)"),
    ]

    def __init__(self, args: GenerateArgs | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.args = args or GenerateArgs()
        self.knobs = Knobs()
        self.performance: Performance | None = None
        self.last_saved: Path | None = None
        self.last_saved_all: list[Path] = []  # one file per alternative
        self.telemetry: PerformanceTelemetry | None = None
        self._ports_listed = False
        self._pending_port: str | None = None
        self.taps: list[float] = []  # t pressed on the beat: when (monotonic seconds)

    def compose(self) -> ComposeResult:
        given, knobs = self.args, self.knobs

        def arg(value: Any, default: Any) -> Any:
            return default if value is None else value

        ckpt = given.checkpoint or default_checkpoint() or ""
        with Horizontal(classes="toolbar"):
            yield Label("Checkpoint", classes="field-label")
            yield Input(str(ckpt), placeholder="model .pth or run folder", id="gen-ckpt")
            yield Label("Prompt", classes="field-label")
            yield Input(str(arg(given.prompt, "")), placeholder="prompt .mid (optional)", id="gen-prompt")
            yield Input(str(arg(given.prompt_bars, "")), placeholder="bars 13-16", id="gen-bars-range")
        with Horizontal(classes="toolbar"):
            yield Label("temp", classes="field-label")
            yield Input(str(arg(given.temperature, knobs.temperature)), id="gen-temperature")
            yield Label("top-p", classes="field-label")
            yield Input(str(arg(given.top_p, knobs.top_p)), id="gen-top-p")
            yield Label("alts", classes="field-label")
            yield Input(str(arg(given.alternatives, knobs.alternatives)), id="gen-alternatives")
            yield Label("bars", classes="field-label")
            yield Input(str(arg(given.bars, knobs.bars)), id="gen-bars")
            yield Label("seed", classes="field-label")
            yield Input(str(arg(given.seed, "")), placeholder="random", id="gen-seed")
        with Horizontal(classes="toolbar"):
            yield Label("Out", classes="field-label")
            yield Select([(x, x) for x in APIS], value=str(arg(given.midi_api, "auto")), allow_blank=False,
                         id="gen-api")
            yield Select(OWN_OUTPUTS, value={"fluidsynth": FLUIDSYNTH, "builtin": BUILTIN}.get(given.synth, VIRTUAL),
                         allow_blank=False, id="gen-port")
            yield Button("Ports", id="gen-refresh")
        with Horizontal(classes="toolbar"):
            yield Label("In", classes="field-label")
            yield Select(OWN_INPUTS, value=NO_INPUT, allow_blank=False, id="gen-in")
            yield Label("Mode", classes="field-label")
            duet = given.duet or DuetConfig()
            yield Select([(m, m) for m in MODES], value=duet.mode, allow_blank=False, id="gen-mode")
            yield Button("Play", id="gen-play", variant="success")
            yield Button("Panic", id="gen-panic", variant="error")
            yield Button("Save", id="gen-save")
        with Horizontal(classes="toolbar hidden", id="gen-duet"):  # shown with an input, each knob where its mode uses it
            for name in DuetConfig.knobs():
                with Horizontal(classes="duet-knob", id=f"gen-knob-{name}"):
                    yield from self._duet_knob(name, getattr(duet, name))
        yield Static("", id="gen-message")
        yield PianoRoll(id="gen-roll", classes="panel", yours_channel=HUMAN_CHANNEL)
        with Horizontal(id="gen-bottom"):
            yield Static("", id="gen-knobs", classes="panel")
            yield Static("", id="gen-telemetry", classes="panel")

    @staticmethod
    def _duet_knob(name: str, value: Any) -> ComposeResult:
        """A duet setting's field: a check box (on/off), a choice (takeback) or a text field (a number)."""
        ident, about = f"gen-duet-{name}", DuetConfig.about(name)
        if isinstance(value, bool):
            box = Checkbox(DuetConfig.label(name), value, id=ident, compact=True)
            box.tooltip = about
            yield box
            return
        yield Label(DuetConfig.label(name), classes="field-label")
        if name == "takeback":
            field = Select([(t, t) for t in TAKEBACKS], value=value, allow_blank=False, id=ident)
        else:
            field = Input(f"{value:g}" if name == "tempo" else str(value), id=ident)
        field.tooltip = about + (" Press t a few times on the beat to tap it." if name == "tempo" else "")
        yield field

    def on_mount(self) -> None:
        self.query_one("#gen-roll").border_title = "Piano roll (┃ now, ▒ buffered ahead, [magenta]█[/] you)"
        self.query_one("#gen-knobs").border_title = "Knobs"
        self.query_one("#gen-telemetry").border_title = "Timing"
        try:
            self._read_knobs()  # the fields may come from the command line
        except ValueError as exc:
            self.tell(f"{exc}; fix the field before playing.", severity="error")
        self._render_knobs()
        self._render_telemetry()
        self.set_interval(1 / 15, self._tick)
        if self.args.port:
            self._pending_port = self.args.port
        self._show_duet_knobs()

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "toggle_play":
            focused = self.screen.focused
            if isinstance(focused, Input) or (isinstance(focused, Select) and focused.expanded):
                return None  # shown, but the key goes to the text field or the open list
        return True

    def tell(self, text: str, severity: str = "information", timeout: float = 6, title: str = "") -> None:
        """A notification; a warning or an error also stays readable on the pane's message line."""
        self.notify(text, severity=severity, timeout=timeout, title=title)
        if severity in ("warning", "error"):
            line = Text(time.strftime("%H:%M:%S "), style="dim")
            line.append(f"{title + ': ' if title else ''}{text}", style="bold red" if severity == "error" else "yellow")
            self.query_one("#gen-message", Static).update(line)

    def focus_main(self) -> None:
        self.query_one("#gen-play", Button).focus()
        if not self._ports_listed:
            # probing MIDI systems is slow (and JACK talks on stderr): only once the pane is shown
            self._ports_listed = True
            self.action_refresh_ports()

    @property
    def is_on_screen(self) -> bool:
        stack = self.app.screen_stack  # empty while the app closes
        return bool(stack) and stack[-1] is self.screen and self.region.area > 0

    @property
    def performing(self) -> bool:
        return self.performance is not None and self.performance.active

    # ---- knobs ----------------------------------------------------------------------------------

    def _read_knobs(self) -> None:
        """Validate the knob fields into ``self.knobs`` (the performance reads them per token)."""
        get = lambda name: self.query_one(f"#gen-{name}", Input).value.strip()  # noqa: E731
        temperature = _bounded(get("temperature"), "temperature", *KNOB_RANGES["temperature"])
        top_p = _bounded(get("top-p"), "top-p", *KNOB_RANGES["top_p"])
        alternatives = _bounded(get("alternatives"), "alternatives", 1, 8, int)
        bars = _bounded(get("bars"), "bars", 1, 512, int)
        seed = _bounded(get("seed"), "seed", 0, 2**31 - 1, int) if get("seed") else None
        self.knobs.update(temperature=temperature, top_p=top_p, alternatives=alternatives, bars=bars, seed=seed)

    @on(Input.Submitted)
    @on(Input.Blurred)
    def _knob_edited(self, event: Input.Submitted | Input.Blurred) -> None:
        if (event.input.id or "").startswith("gen-duet-"):
            try:
                self.duet_settings()
            except ValueError as exc:
                self.tell(f"{exc}; fix the field before playing.", severity="error")
            return
        if event.input.id in ("gen-temperature", "gen-top-p", "gen-alternatives", "gen-bars", "gen-seed"):
            try:
                self._read_knobs()
            except ValueError as exc:
                self.tell(f"{exc}; the previous value stays in use.", severity="error")
            self._render_knobs()

    def action_nudge(self, name: str, delta: float) -> None:
        value = getattr(self.knobs, name) + delta
        low, high = KNOB_RANGES[name]
        value = min(high, max(low, value))
        self.knobs.update(**{name: round(value, 3)})
        self.query_one("#gen-temperature" if name == "temperature" else "#gen-top-p", Input).value = f"{value:.2f}"
        self._render_knobs()

    def _render_knobs(self) -> None:
        k = self.knobs
        text = Text()
        text.append(f"temp {k.temperature:.2f}  top-p {k.top_p:.2f}\n")
        text.append(f"bars {k.bars}  alts {k.alternatives}  seed {k.seed if k.seed is not None else 'random'}\n")
        text.append("changes apply to the next tokens", style="dim")
        self.query_one("#gen-knobs", Static).update(text)

    # ---- playing with the model: the duet's knobs -------------------------------------------------

    @on(Select.Changed, "#gen-in")
    @on(Select.Changed, "#gen-mode")
    def _show_duet_knobs(self) -> None:
        """The knob row shows with an input chosen, and in it only the knobs the mode uses."""
        listening = self.query_one("#gen-in", Select).value != NO_INPUT
        self.query_one("#gen-duet").set_class(not listening, "hidden")
        used = DuetConfig.knobs(str(self.query_one("#gen-mode", Select).value))
        for name in DuetConfig.knobs():
            self.query_one(f"#gen-knob-{name}").set_class(name not in used, "hidden")

    def duet_settings(self) -> DuetConfig:
        """The duet's settings from the fields the mode shows (the others keep the engine's defaults),
        built as the headless command builds them; a ValueError says which field is wrong."""
        mode = str(self.query_one("#gen-mode", Select).value)
        values = {name: self.query_one(f"#gen-duet-{name}").value for name in DuetConfig.knobs(mode)}
        return duet_config(mode=mode, **values)

    def action_tap_tempo(self) -> None:
        """One tap on the beat: from the second on, the tempo field shows the tempo tapped so far."""
        now = time.monotonic()
        if self.taps and now - self.taps[-1] > TAP_RESET_S:
            self.taps.clear()
        self.taps = (self.taps + [now])[-8:]
        qpm = tempo_from_taps(self.taps)
        if qpm is None:
            self.notify("Tap tempo: keep tapping t on the beat.", timeout=2)
            return
        self.query_one("#gen-duet-tempo", Input).value = f"{qpm:.0f}"
        self.notify(f"Tapped tempo {qpm:.0f} quarter notes per minute ({len(self.taps)} taps).", timeout=2)

    # ---- ports ----------------------------------------------------------------------------------

    @on(Button.Pressed, "#gen-refresh")
    def action_refresh_ports(self) -> None:
        self._list_ports(str(self.query_one("#gen-api", Select).value))

    @on(Select.Changed, "#gen-api")
    def _api_changed(self) -> None:
        self.action_refresh_ports()

    @work(thread=True, exclusive=True, group="ports", exit_on_error=False, name="list ports")
    def _list_ports(self, api: str) -> None:
        from engine.midi import ports

        try:
            found = ports.list_ports(api)
        except Exception as exc:  # noqa: BLE001
            self.post_message(PortsListed(api, [], error=one_sentence(exc)))
            return
        names = [f"{name}\t{which}" for which, names in found.items() for name in names]
        try:
            sources = [f"{name}\t{which}" for which, names in ports.list_input_ports(api).items() for name in names]
        except Exception:  # noqa: BLE001 - inputs are optional: the outputs still list
            sources = []
        self.post_message(PortsListed(api, names, inputs=sources))

    def on_ports_listed(self, message: PortsListed) -> None:
        select = self.query_one("#gen-port", Select)
        current = select.value
        options = list(OWN_OUTPUTS)
        for entry in message.ports:
            name, which = entry.split("\t")
            if "PianoMuse" in name and "FluidSynth" not in name:
                continue  # our own ports
            options.append((f"{name} ({which})", entry))
        select.set_options(options)
        wanted = self._pending_port
        values = [v for _, v in options]
        if wanted:
            match = next((v for v in values if wanted.lower() in v.split("\t")[0].lower()), None)
            if match:
                select.value = match
                self._pending_port = None
        elif current in values:
            select.value = current
        self._list_inputs(message.inputs)
        if message.error:
            self.tell(message.error, severity="warning", timeout=6)

    def _list_inputs(self, sources: list[str]) -> None:
        select = self.query_one("#gen-in", Select)
        current = select.value
        options = list(OWN_INPUTS) + [(f"{entry.split(chr(9))[0]} ({entry.split(chr(9))[1]})", entry.split(chr(9))[0])
                                      for entry in sources if "PianoMuse" not in entry]
        select.set_options(options)
        wanted = self.args.midi_in
        values = [v for _, v in options]
        match = next((v for v in values if wanted and str(wanted).lower() in v.lower()), None)
        select.value = match or (current if current in values else NO_INPUT)

    # ---- play / stop ----------------------------------------------------------------------------

    def _settings(self, midi_file: Path | None = None) -> PerformanceSettings:
        self._read_knobs()
        port = self.query_one("#gen-port", Select).value
        api = str(self.query_one("#gen-api", Select).value)
        ckpt = self.query_one("#gen-ckpt", Input).value.strip()
        prompt = self.query_one("#gen-prompt", Input).value.strip()
        if midi_file is None and not ckpt:
            raise ValueError("No checkpoint: type the path of a model .pth (train one in the Train pane)")
        midi_in = None if self.query_one("#gen-in", Select).value == NO_INPUT else str(self.query_one("#gen-in", Select).value)
        # whether the files are there is the performance worker's first question (it touches the disk)
        return PerformanceSettings(
            checkpoint=Path(ckpt) if ckpt else None,
            prompt=Path(prompt) if prompt else None,
            prompt_bars=self.query_one("#gen-bars-range", Input).value.strip() or None,
            output=OutputChoice(api=api, port=None if port in (VIRTUAL, FLUIDSYNTH, BUILTIN) else str(port).split("\t")[0],
                                virtual=port == VIRTUAL,
                                synth="builtin" if port == BUILTIN else "fluidsynth" if port == FLUIDSYNTH else None),
            midi_in=midi_in,
            duet=self.duet_settings() if midi_in else None,
            midi_file=midi_file,
        )

    @on(Button.Pressed, "#gen-play")
    def action_toggle_play(self) -> None:
        if self.performing:
            self.stop_performance()
        else:
            self.start_performance()

    def start_performance(self, midi_file: Path | None = None) -> None:
        if self.performing:
            self.tell("Already playing; stop first (space).", severity="warning")
            return
        try:
            settings = self._settings(midi_file)
        except ValueError as exc:
            self.tell(f"{exc}.", severity="error")
            return
        self._render_knobs()
        roll = self.query_one(PianoRoll)
        roll.clear()
        self.performance = Performance(settings, self.knobs, on_event=roll.note_event,
                                       on_problem=lambda text: self.app.call_from_thread(
                                           self.tell, text, severity="warning", timeout=8))
        self.query_one("#gen-play", Button).label = "Stop"
        self._perform(self.performance)

    def play_file(self, path: Path) -> None:
        """Play a MIDI file (an audition) through the chosen output."""
        if self.performing:
            self.stop_performance()
        self.start_performance(midi_file=Path(path))  # "Playing ..." is said once the output is open

    def use_checkpoint(self, path: Path) -> None:
        self.query_one("#gen-ckpt", Input).value = str(path)

    def stop_performance(self) -> None:
        if self.performance is not None:
            self.performance.stop()

    @work(thread=True, exclusive=True, group="perform", exit_on_error=False, name="performance")
    def _perform(self, performance: Performance) -> None:
        worker = get_current_worker()
        end = performance.perform(lambda: worker.is_cancelled,
                                  on_started=lambda output: self.post_message(PerformanceStarted(output)))
        error = end.problem or (one_sentence(end.error) if end.error is not None else None)
        self.post_message(PerformanceEnded(end.reason, error=error, output_failed=end.output_failed))

    def on_performance_started(self, message: PerformanceStarted) -> None:
        played = self.performance.settings.midi_file if self.performance is not None else None
        self.notify(f"Playing {played.name + ' ' if played else ''}to {message.output}.", timeout=3)

    def on_performance_progress(self, message: PerformanceProgress) -> None:
        self.telemetry = message.telemetry
        self._render_telemetry()

    def on_performance_ended(self, message: PerformanceEnded) -> None:
        self.query_one("#gen-play", Button).label = "Play"
        if message.error:
            self.tell(self._with_alternatives(message), title="performance stopped", severity="error", timeout=10)
        if self.performance is not None:
            self.telemetry = self.performance.telemetry() or self.telemetry
        self._render_telemetry(ended=message.reason)

    def _with_alternatives(self, message: PerformanceEnded) -> str:
        """The error, plus what this pane can do instead when the output could not open."""
        text = message.error.rstrip(".")
        if not message.output_failed:
            return f"{text}."
        settings = self.performance.settings if self.performance is not None else None
        builtin = "" if settings is None or settings.output.synth == "builtin" else "pick 'built-in piano' in Out, or "
        if settings is not None and settings.midi_file is not None:
            return f"{text}; {builtin}open the audition's file {settings.midi_file} in any MIDI player."
        return f"{text}; {builtin}press w to write the take to a MIDI file without playing."

    @on(Button.Pressed, "#gen-panic")
    def action_panic(self) -> None:
        if self.performance is not None:
            self.performance.panic()
        self.notify("Panic: all notes released.", timeout=2)

    def action_fluidsynth(self) -> None:
        self.query_one("#gen-port", Select).value = FLUIDSYNTH
        if not self.performing:
            self.start_performance()

    @on(Button.Pressed, "#gen-save")
    def action_save(self) -> None:
        out = Path("takes") / time.strftime("pianomuse-%Y%m%d-%H%M%S.mid")
        if self.performance is None or not self.performance.has_events:
            # nothing played (no MIDI system, or not yet): generate the take straight into files
            try:
                settings = self._settings()
            except ValueError as exc:
                self.tell(f"{exc}.", severity="error")
                return
            self.notify(f"Writing a take to {out.parent}/ without playing…", timeout=3)
            self._write_take(settings, self.knobs.snapshot(), out)
            return
        try:
            saved = self.performance.save(out)
        except Exception as exc:  # noqa: BLE001
            self.tell(f"Could not save {out}: {exc}", severity="error")
            return
        self.last_saved, self.last_saved_all = saved[0], saved
        if len(saved) == 1:
            self.notify(f"Saved {saved[0]}.", timeout=5)
        else:
            self.notify(f"Saved {len(saved)} alternatives: {saved[0]} .. {saved[-1].name} (the first is the one heard).",
                        timeout=5)

    @work(thread=True, exclusive=True, group="perform", exit_on_error=False, name="take writer")
    def _write_take(self, settings: PerformanceSettings, knobs: KnobSettings, out: Path) -> None:
        from engine.generate import GenerationError
        from engine.generate.performance import write_take

        problem = settings.problem()
        if problem is not None:
            self.post_message(TakeWritten([], error=problem))
            return
        try:
            written = write_take(settings, knobs, out)
        except (GenerationError, OSError) as exc:
            self.post_message(TakeWritten([], error=one_sentence(exc)))
            return
        self.post_message(TakeWritten(written))

    def on_take_written(self, message: TakeWritten) -> None:
        if message.error:
            self.tell(f"No take written: {message.error}", severity="error", timeout=10)
            return
        self.last_saved, self.last_saved_all = message.paths[0], message.paths
        self.notify(f"Wrote {', '.join(str(p) for p in message.paths)}.", timeout=6)

    # ---- redraw ---------------------------------------------------------------------------------

    def _tick(self) -> None:
        perf = self.performance
        if perf is None or not perf.active or not self.is_on_screen:
            return  # the roll and the timing only redraw while someone can see them
        roll = self.query_one(PianoRoll)
        roll.now = perf.music_time()
        roll.refresh()
        self.post_message(PerformanceProgress(perf.telemetry()))

    def _render_telemetry(self, ended: str | None = None) -> None:
        text = Text()
        if self.telemetry is None:
            text.append("not playing: space plays, ! panics", style="dim")
        else:
            t, duet = self.telemetry.scheduler, self.telemetry.duet
            text.append(f"lateness p50 {t.lateness_p50_ms:.2f} ms  p99 {t.lateness_p99_ms:.2f} ms"
                        f"  max {t.lateness_max_ms:.1f} ms  underruns {t.underruns}\n")
            look = t.lookahead_s or 0.5
            text.append(f"buffer {t.buffer_s:.2f}/{look:.2f} s ")
            text.append_text(bar(t.buffer_s / look, 12))
            text.append(f"  {t.tokens_per_s:.0f} tok/s  notes on {t.notes_sounding}")
            k = self.performance.alternatives if self.performance is not None else 1
            if k > 1:
                text.append(f"\nhearing alternative 1 of {k}; w saves all {k}", style="cyan")
            if duet is not None:
                answered = (f"; its first note {duet.last_answer_ms:.0f} ms after the last, at most "
                            f"{duet.slowest_answer_ms:.0f} ms" if duet.last_answer_ms is not None else "")
                n = duet.handovers
                text.append(f"\nheard {duet.notes_heard} of your notes; {n} handover{'' if n == 1 else 's'}{answered}",
                            style="magenta")
            if t.falling_behind:
                text.append("\nthe model is falling behind: fewer alternatives or a smaller model help",
                            style="bold yellow")
            if t.port_state not in ("ok", "stopped"):
                text.append(f"\nport {t.port_state}", style="bold red")
        if ended:
            text.append(f"\nended: {ended}", style="dim")
        self.query_one("#gen-telemetry", Static).update(text)

    async def shutdown(self) -> None:
        """Stop playing and release every note before the app goes away."""
        perf = self.performance
        if perf is None:
            return
        perf.stop()
        import asyncio

        deadline = time.monotonic() + 5
        while perf.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        perf.close()

"""One take, for both faces: a live performance (generated, a duet with a pianist, or a MIDI file
played back) or a take generated and written without playing. `--headless generate` runs a whole
take with one call (``Performance.take``); the app's Generate pane runs the same object step by step
from its worker threads (``prepare``, ``run``, ``save``) and only draws what it reports (the
piano-roll callback, the typed telemetry records).

This module owns a take's lifecycle: the output (what plays when none was chosen, and the virtual
port when the built-in piano cannot sound here), the model and its session (or the duet), the
knobs (read before every step, so a change takes effect on the next tokens), playing through the
engine's ``LivePlayer`` (pre-roll, back-pressure, port loss and reconnect are the player's), Ctrl-C,
SIGTERM and SIGHUP (they stop the take, which is then written), the take's file names and files,
and the typed records a face prints or draws (``TakeReady``, ``TakeEnd`` with its end reason).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from engine.generate.defaults import DuetConfig, KnobSettings, SamplingConfig
from engine.midi.player import LivePlayer, OutputChoice, PlayerNotice
from engine.midi.ports import PortError
from engine.midi.scheduler import SchedulerTelemetry
from engine.signals import signals_call

class Knobs:
    """The live knobs, shared between the UI thread (``update``) and the performance thread, which
    reads an immutable ``KnobSettings`` before every step; they start from the engine's generation
    defaults, as `--headless generate` does. ``knobs.temperature`` reads the latest value."""

    def __init__(self, settings: KnobSettings | None = None) -> None:
        self._lock = threading.Lock()
        self._settings = settings or KnobSettings()

    def update(self, **values: Any) -> None:
        with self._lock:
            self._settings = replace(self._settings, version=self._settings.version + 1, **values)

    def snapshot(self) -> KnobSettings:
        return self._settings  # immutable: a new object on every update

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not a knob (and no recursion before __init__ ran)
            raise AttributeError(name)
        return getattr(self._settings, name)


@dataclass(frozen=True)
class DuetTiming:
    """Playing with the model: the handovers so far and how fast the model answered."""

    handovers: int
    notes_heard: int  # your notes the model was fed
    last_answer_ms: float | None  # from the handover to the model's first note, the latest one
    slowest_answer_ms: float | None
    median_answer_ms: float | None = None
    model_notes: int = 0  # notes the model played


@dataclass(frozen=True)
class PerformanceTelemetry:
    """What the Timing panel shows: the engine's scheduler telemetry, and the duet's when there is one."""

    scheduler: SchedulerTelemetry
    duet: DuetTiming | None = None


@dataclass
class PerformanceSettings:
    """What a take plays and how. ``sampling``, ``max_tokens``, ``allow_early_end`` and ``threads``
    are the command's options; the pane leaves them at their defaults and turns knobs instead."""

    checkpoint: Path | None
    prompt: Path | None = None
    prompt_bars: str | None = None
    # where it sounds; none chosen: the virtual port, or in a duet the built-in piano (the virtual
    # port when this machine has no sound output for it, said once)
    output: OutputChoice = field(default_factory=OutputChoice)
    play: bool = True  # False: generate the take and write it without playing (nothing opens)
    midi_in: str | None = None  # play with the model: an input port's name, or "virtual" ('PianoMuse in')
    duet: DuetConfig | None = None  # with midi_in: the mode and its knobs (None: the engine's defaults)
    midi_file: Path | None = None  # play this file instead of generating
    sampling: SamplingConfig | None = None  # every sampling option; None: the knobs' temperature, top-p and seed
    max_tokens: int | None = None  # a token budget per alternative (None: the hard cap)
    allow_early_end: bool = False  # the model may end the piece before its bars
    threads: int = 1  # CPU threads for the model (1 keeps per-token time steady); 0 leaves torch's choice

    def problem(self) -> str | None:
        """The sentence saying why these settings cannot play (a file that is not there), or None."""
        if self.midi_file is not None:
            return None if self.midi_file.is_file() else f"{self.midi_file} does not exist; pick another audition."
        if self.checkpoint is not None and not self.checkpoint.exists():
            return f"Checkpoint {self.checkpoint} does not exist; type the path of a model .pth."
        if self.prompt is not None and not self.prompt.is_file():
            return f"Prompt {self.prompt} does not exist; type a .mid file or clear the field."
        return None


@dataclass(frozen=True)
class TakeReady:
    """Said once the take's output is open and its model loaded, before the first note."""

    checkpoint: Path | None  # the .pth (None: a MIDI file played back)
    model: str  # the model's shape, in words
    tokenization: str
    prompt_tokens: int  # 0 without a prompt
    output: str | None  # where it plays; None: written without playing
    listening: str | None  # the input a duet listens to
    lookahead: float  # seconds of music generated ahead of the playhead


@dataclass(frozen=True)
class AlternativeSummary:
    """One alternative of a generated take, as it ended."""

    tokens: int
    bars: int
    notes: int
    stop_reason: str | None  # "bars" | "eos" (the model ended the piece) | "max_tokens" (the user's budget)
    #                          | "token_limit" (no budget given: a take's hard cap); None: stopped
    ended_early: bool  # stopped before the bars asked for (the model's end, or the token budget)


@dataclass(frozen=True)
class GenerationSummary:
    """A generated take at its end: tokens, time, seed and each alternative."""

    tokens: int
    seconds: float
    seed: int
    bars: int | None  # asked for (None: a token budget only)
    alternatives: tuple[AlternativeSummary, ...]
    token_limit: int | None = None  # the tokens an alternative may take (the user's budget or the hard cap)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def of(cls, session, seconds: float, budget_given: bool = True) -> "GenerationSummary":
        """``budget_given`` False: the session's token budget is the hard cap, not one the user set."""
        def reason(stop_reason):
            return "token_limit" if stop_reason == "max_tokens" and not budget_given else stop_reason

        rows = tuple(AlternativeSummary(len(row.tokens), max(row.bars, 0), len(row.decoder.notes), reason(row.stop_reason),
                                        session.ended_early(r)) for r, row in enumerate(session.rows))
        return cls(session.tokens_generated, seconds, session.seed, session.bars, rows, session.max_tokens)


@dataclass(frozen=True)
class PlayEnd:
    """How the app's live take (``Performance.perform``) ended: the player's reason, or "error" with
    the settings' ``problem`` sentence (found before any port opened) or the ``error`` raised;
    ``output_failed``: the output could not open and nothing was played."""

    reason: str
    problem: str | None = None
    error: Exception | None = None
    output_failed: bool = False


@dataclass(frozen=True)
class TakeEnd:
    """How a take ended: the player's reason ("finished", "stopped" by Ctrl-C or a stop request,
    "port lost" for good), the files written, and what the face reports."""

    reason: str
    written: tuple[Path, ...]
    generation: GenerationSummary | None  # None in a duet or for a MIDI file
    telemetry: PerformanceTelemetry | None  # None when nothing played


class TakeInterrupted(Exception):
    """Ctrl-C (or SIGTERM, SIGHUP) before the take began: nothing was played or written."""

    def __init__(self, stage: str) -> None:
        super().__init__(f"interrupted while {stage}")
        self.stage = stage


class TakeWriteError(OSError):
    """A take's file cannot be written (checked before generating, so that no take is lost)."""


def unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be written (a sentence without the remedy), or None."""
    folder = Path(path).parent
    while not folder.exists():  # the writer creates missing folders
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        return f"cannot write {path}: {folder} is not a writable folder"
    return None


def play_generated(player: LivePlayer, session, knobs: Callable[[], KnobSettings] | None = None,
                   stopped: Callable[[], bool] | None = None) -> str:
    """Play alternative 1 of a built ``session`` through ``player``, following ``knobs``; the end reason."""
    from engine.generate.live import chunks

    return player.play(chunks(session, knobs=knobs, stop=player.stop_event), stopped)


def default_checkpoint() -> Path | None:
    """The bundled model if there is one, else the newest checkpoint of the newest run in ./runs."""
    from engine.eval import default_checkpoint as bundled_checkpoint  # light: no torch until asked

    from engine.rundir import WEIGHTS, latest_checkpoint, newest_run

    bundled = bundled_checkpoint()
    if bundled is not None:
        return bundled
    run = newest_run(Path("runs"))
    latest = latest_checkpoint(run) if run is not None else None
    return latest / WEIGHTS if latest is not None else None


class Performance:
    """One take. ``take`` runs all of it (the command); ``prepare``, ``run``, ``save`` and ``close``
    are its steps (the pane, which saves when asked)."""

    def __init__(self, settings: PerformanceSettings, knobs: Knobs | None = None,
                 on_event: Callable[..., None] | None = None,
                 on_problem: Callable[[str], None] | None = None,
                 on_notice: Callable[[PlayerNotice], None] | None = None) -> None:
        self.settings = settings
        self.knobs = knobs or Knobs()
        self.on_event = on_event
        self.on_problem = on_problem  # the player's news as a sentence (falling behind is the telemetry's)
        self.on_notice = on_notice  # the player's news as it comes
        self.player = self._player(settings.output)
        self.session = None  # the engine's GenerationSession: it holds every alternative, played or not
        self.listening = None  # the MIDI input when playing with the model
        self.duet = None  # the engine's Duet then
        self.ready: TakeReady | None = None  # set once loaded
        self.end_reason = "finished"
        self._active = threading.Event()
        self._stop_asked = threading.Event()  # outlives the players: a duet may try two outputs

    def _player(self, choice: OutputChoice) -> LivePlayer:
        return LivePlayer(choice, on_event=self._roll_event, on_notice=self._notice)

    def _use_player(self, choice: OutputChoice) -> LivePlayer:
        """Make the player for ``choice`` the take's; a stop asked before (while another output was
        being tried) stops it too. Set first and checked after, as ``stop`` does in the other order,
        so a stop from another thread meanwhile reaches one of them."""
        self.player = player = self._player(choice)
        if self._stop_asked.is_set():
            player.stop()
        return player

    # ---- state read by the UI -------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self._active.is_set()

    @property
    def has_events(self) -> bool:
        return bool(self.player.played)

    @property
    def alternatives(self) -> int:
        """How many alternatives this performance generates (row 0 is the one heard)."""
        session = self.session
        return session.alternatives if session is not None else 1

    @property
    def output_name(self) -> str:
        return self.player.output_name

    def telemetry(self) -> PerformanceTelemetry | None:
        """The scheduler's timing and, playing with the model, the duet's; None before the output opens."""
        scheduler = self.player.telemetry()
        if scheduler is None:
            return None
        duet, timing = self.duet, None
        if duet is not None:  # playing with the model: how fast it answered, and what it heard
            waits = duet.latencies()
            ordered = sorted(waits)
            timing = DuetTiming(handovers=len(duet.handovers), notes_heard=duet.fed_notes,
                                last_answer_ms=1000 * waits[-1] if waits else None,
                                slowest_answer_ms=1000 * ordered[-1] if waits else None,
                                median_answer_ms=1000 * ordered[len(ordered) // 2] if waits else None,
                                model_notes=sum(e.is_note_on for e in duet.take.model))
        return PerformanceTelemetry(scheduler, timing)

    def music_time(self) -> float:
        """Where the playhead is, in the events' music seconds."""
        return self.player.music_time()

    # ---- the whole take (the command) -----------------------------------------------------------

    def take(self, out: Path | None = None, on_ready: Callable[[TakeReady], None] | None = None) -> TakeEnd:
        """Open, load, play (or generate without playing) and write the take as ``out`` (the names
        ``take_paths`` gives; OUT.wav also renders each file with the built-in piano), then close.

        Ctrl-C, SIGTERM and SIGHUP stop the take: every note is released and what was made so far
        is written (reason "stopped"); before the take began they raise ``TakeInterrupted``. Bad
        input raises GenerationError, PortError (NoMidiSystem: no MIDI system here) or TakeWriteError."""
        playing = threading.Event()

        def on_signal(signum: int) -> None:
            # once the take plays, any number of signals ask it to stop: they never cut short the
            # release of the notes or the writing of the take; before that, they abandon it
            if playing.is_set():
                self.stop()
            else:
                raise KeyboardInterrupt

        try:
            with signals_call(on_signal):
                paths, wav = self._begin(out, on_ready)
                playing.set()
                return self._perform_and_write(paths, wav)
        finally:
            self.close()

    def _begin(self, out: Path | None, on_ready) -> tuple[list[Path], bool]:
        """Everything before the first note: the .wav check, the ports, the model, the file names;
        a signal meanwhile raises ``TakeInterrupted``."""
        stage = "opening the MIDI ports"
        try:
            wav = out is not None and Path(out).suffix.lower() == ".wav"
            if wav:
                from engine.midi.builtin_synth import builtin_problem

                problem = builtin_problem(self.settings.output.soundfont)  # rendering needs the built-in piano
                if problem:
                    from engine.generate import GenerationError

                    raise GenerationError(problem)
            self.prepare()
            stage = "loading the model"
            ready, paths = self.load(), self._paths(out)
            if on_ready is not None:
                on_ready(ready)
            return paths, wav
        except KeyboardInterrupt:
            raise TakeInterrupted(stage) from None

    def _paths(self, out: Path | None) -> list[Path]:
        from engine.midi.player import take_paths

        session = self.session
        paths = take_paths(out, session.alternatives, session.seed) if session is not None else take_paths(out, 1, 0)
        problem = unwritable(paths[0])
        if problem:
            raise TakeWriteError(problem)
        return paths

    def _perform_and_write(self, paths: list[Path], wav: bool) -> TakeEnd:
        started = time.perf_counter()
        try:
            reason = self.run() if self.settings.play else self._generate()
        finally:
            seconds = time.perf_counter() - started
            self.close()
            written = self._write(paths, wav=wav)
        generated = self.session is not None and self.duet is None
        self.end_reason = reason
        return TakeEnd(reason, tuple(written), GenerationSummary.of(self.session, seconds, self.settings.max_tokens is not None)
                       if generated else None,
                       self.telemetry())

    def _generate(self) -> str:
        """Generate every alternative without playing, until done or stopped."""
        session, stop = self.session, self.player.stop_event
        while not session.done:
            if stop.is_set():
                return "stopped"
            session.step()
        return "finished"

    # ---- the app's live take (the pane's worker thread) --------------------------------------------

    def perform(self, cancelled: Callable[[], bool] | None = None,
                on_started: Callable[[str], None] | None = None) -> PlayEnd:
        """The whole live take in one call: the settings checked before any port opens, the output
        (and input) opened, ``on_started(output name)``, play until finished, stopped, ``cancelled()``
        or the port is lost, and every port closed on every path. Errors come back in the record."""
        problem = self.settings.problem()
        if problem is not None:
            return PlayEnd("error", problem=problem)
        try:
            self.prepare()
            if on_started is not None:
                on_started(self.output_name)
            return PlayEnd(self.run(cancelled))
        except Exception as exc:  # noqa: BLE001 - the face says it in one sentence
            return PlayEnd("error", error=exc, output_failed=isinstance(exc, PortError) and not self.has_events)
        finally:
            self.close()

    # ---- the steps ------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Open the input when listening, then the output (starting FluidSynth if asked); nothing
        when the take is written without playing. PortError says what to do."""
        self._active.set()
        s = self.settings
        if not s.play:
            return
        if s.midi_in and not s.midi_file:
            from engine.midi.ports import open_input

            self.listening = open_input(s.output.api, None if s.midi_in == "virtual" else s.midi_in,
                                        virtual=s.midi_in == "virtual")
        self._open_output()

    def _open_output(self) -> None:
        c = self.settings.output
        if not self.settings.midi_in or c.port or c.virtual or c.synth is not None:
            self.player.open()  # chosen (or generating: the virtual port)
            return
        # a duet with no output chosen: you want to hear it, so the built-in piano, or the virtual
        # port when this machine has no sound output for it
        try:
            self._use_player(replace(c, synth="builtin")).open()
            return
        except PortError as err:
            self._notice(PlayerNotice("instead", f"{err} Playing to the virtual port 'PianoMuse' instead."))
        self._use_player(replace(c, virtual=True)).open()

    def load(self) -> TakeReady:
        """Load the model and build the session (or the duet); nothing to load for a MIDI file.
        Raises GenerationError (a checkpoint or prompt that cannot be used)."""
        s = self.settings
        if s.threads > 0:
            import torch

            # one thread by default: steadier per-token time, and the other core stays free for the
            # UI thread, the scheduler's sender and a training run
            torch.set_num_threads(s.threads)
        output = self.player.output_name if s.play else None
        if s.midi_file is not None:
            self.ready = TakeReady(None, "", "", 0, output, None, s.output.lookahead)
            return self.ready
        from engine.generate.live import knob_sampling, load_generator, session_from_knobs

        knobs = self.knobs.snapshot()
        if self.listening is not None:
            from engine.generate.duet import load_duet

            self.duet, pth = load_duet(s.checkpoint, knob_sampling(knobs, s.sampling), s.duet or DuetConfig(),
                                       self.player, self.listening.messages, on_human=self._roll_event,
                                       stop=self.player.stop_event, knobs=self.knobs.snapshot)
            session = self.duet.session
        else:
            model, tokenizer, pth = load_generator(s.checkpoint)
            session = session_from_knobs(model, tokenizer, knobs, prompt=s.prompt, prompt_bars=s.prompt_bars,
                                         sampling=s.sampling, max_tokens=s.max_tokens, allow_early_end=s.allow_early_end)
        self.session = session
        self.ready = TakeReady(pth, session.model.config.describe(), session.tokenizer.tokenization, len(session.prompt),
                               output, self.listening.name if self.listening is not None else None, s.output.lookahead)
        return self.ready

    def _notice(self, notice: PlayerNotice) -> None:
        if self.on_notice is not None:
            self.on_notice(notice)
        if self.on_problem is not None and notice.kind != "behind":  # the timing panel shows falling behind
            self.on_problem(notice.text[0].upper() + notice.text[1:])

    def _roll_event(self, ev) -> None:
        if self.on_event is None or ev.channel == 9:  # the call-and-response click is not music
            return
        if ev.is_note_on:
            self.on_event(ev.time, "note_on", ev.data[1], ev.data[2], ev.channel)
        elif ev.is_note_off:
            self.on_event(ev.time, "note_off", ev.data[1], 0, ev.channel)

    def run(self, cancelled: Callable[[], bool] | None = None) -> str:
        """Play until done, stopped (``stop()`` or ``cancelled()``) or the port is gone for good,
        loading first unless ``load`` ran; the end reason (also kept as ``end_reason``)."""
        from engine.midi.player import midi_file_chunks

        if self.ready is None:
            self.load()
        player, duet = self.player, self.duet
        try:
            if self.settings.midi_file:
                reason = player.play(midi_file_chunks(self.settings.midi_file), cancelled)
            elif duet is not None:
                reason = player.play(duet.chunks(), cancelled, pending=duet.input_pending)
            else:
                reason = play_generated(player, self.session, self.knobs.snapshot, cancelled)
        finally:
            if duet is not None:
                duet.finish(player.music_time())
        self.end_reason = reason
        return reason

    def stop(self) -> None:
        """Stop the take, from any thread, at any point: while an output is being tried as well."""
        self._stop_asked.set()
        self.player.stop()

    def panic(self) -> None:
        self.player.panic()

    def close(self) -> None:
        """Stop the sender (pending note-offs + panic), close the ports, stop FluidSynth. Idempotent."""
        self.player.close()
        listening, self.listening = self.listening, None
        if listening is not None:
            listening.close()
        self._active.clear()

    def save(self, path: Path) -> list[Path]:
        """What was played as ``path``; with K alternatives, every one as PATH-1.mid .. PATH-K.mid
        (the names ``take_paths`` gives, as `--headless generate --alternatives K --out PATH` writes),
        the first the one heard. Saved while playing, a take ends at the playhead with every sounding
        note released there."""
        from engine.midi.player import take_paths

        session = self.session
        paths = [Path(path)] if session is None else take_paths(Path(path), session.alternatives, session.seed)
        return self._write(paths, until=self.music_time() if self.active else None)

    def _write(self, paths: list[Path], until: float | None = None, wav: bool = False) -> list[Path]:
        """The take as ``paths`` (one per alternative; a duet's two parts in one file), cut at
        ``until`` (music seconds) when given; with ``wav`` each also rendered beside it as .wav."""
        from engine.midi.events import take_until, write_midi_file

        session, duet = self.session, self.duet
        if duet is not None:  # playing with the model: your part and its part, one track each
            if until is not None:
                duet.finish(until)
            parts = [(lambda out: duet.write(out), duet.take.model + duet.take.human)]
        elif session is None:  # a MIDI file played back
            events = self.player.take()
            events = events if until is None else take_until(events, until)
            parts = [(lambda out: write_midi_file(events, out), events)]
        else:
            if until is None:
                session.finish()  # a stopped stream never reached its tail: release what still sounds
            # the session copies each row's events, so generation may go on while the files are written
            parts = [(lambda out, row=row: session.write_midi(row, out, until=until),
                      session.events(row) if wav else None) for row in range(session.alternatives)]
        written = []
        for path, (write, events) in zip(paths, parts):
            try:
                written.append(write(path))
                if wav:
                    from engine.midi.builtin_synth import render_wav

                    written.append(render_wav(events, Path(path).with_suffix(".wav"), self.settings.output.soundfont))
            except OSError as exc:
                raise TakeWriteError(f"could not write {path} ({exc.strerror or exc})") from exc
        return written


def write_take(settings: PerformanceSettings, knobs: KnobSettings, out: Path) -> list[Path]:
    """Generate a take with these settings and knobs without playing it, and write it as ``out``
    (with K alternatives, the names `take_paths` gives). Raises GenerationError or OSError."""
    return list(Performance(replace(settings, play=False), Knobs(knobs)).take(out).written)

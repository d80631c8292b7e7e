"""One take: a live performance (generated, a duet with a pianist, or a MIDI file played back) and
the take written without playing. The app's Generate pane runs these from its worker threads and
only draws what they report (the piano-roll callback, the typed telemetry records).

This is plumbing between engine parts, not music logic: the engine's generation stream makes
timed MIDI events, the engine's ``LivePlayer`` (the same one `--headless generate` plays through)
plays them, and ``Performance`` connects the two, passes the knobs (read before every step, so a
change takes effect on the next tokens) and saves the take.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from engine.generate.defaults import DuetConfig, KnobSettings, SamplingConfig
from engine.midi.scheduler import SchedulerTelemetry


class Knobs:
    """The live knobs, shared between the UI thread (``update``) and the performance thread, which
    reads an immutable ``KnobSettings`` before every step; they start from the engine's generation
    defaults, as `--headless generate` does. ``knobs.temperature`` reads the latest value."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settings = KnobSettings()

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


@dataclass(frozen=True)
class PerformanceTelemetry:
    """What the Timing panel shows: the engine's scheduler telemetry, and the duet's when there is one."""

    scheduler: SchedulerTelemetry
    duet: DuetTiming | None = None


@dataclass
class PerformanceSettings:
    checkpoint: Path | None
    prompt: Path | None = None
    prompt_bars: str | None = None
    api: str = "auto"
    port: str | None = None
    virtual: bool = True
    fluidsynth: bool = False
    builtin: bool = False  # the built-in piano (no MIDI system needed)
    midi_in: str | None = None  # play with the model: an input port's name, or "virtual" ('PianoMuse in')
    duet: DuetConfig | None = None  # with midi_in: the mode and its knobs (None: the engine's defaults)
    midi_file: Path | None = None  # play this file instead of generating
    lookahead: float = 0.5

    def problem(self) -> str | None:
        """The sentence saying why these settings cannot play (a file that is not there), or None."""
        if self.midi_file is not None:
            return None if self.midi_file.is_file() else f"{self.midi_file} does not exist; pick another audition."
        if self.checkpoint is not None and not self.checkpoint.exists():
            return f"Checkpoint {self.checkpoint} does not exist; type the path of a model .pth."
        if self.prompt is not None and not self.prompt.is_file():
            return f"Prompt {self.prompt} does not exist; type a .mid file or clear the field."
        return None


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
    def __init__(self, settings: PerformanceSettings, knobs: Knobs,
                 on_event: Callable[..., None] | None = None,
                 on_problem: Callable[[str], None] | None = None) -> None:
        from engine.midi.player import LivePlayer, OutputChoice

        self.settings = settings
        self.knobs = knobs
        self.on_event = on_event
        self.on_problem = on_problem
        s = settings
        choice = OutputChoice(api=s.api, port=s.port, virtual=s.virtual and not s.port,
                              synth="builtin" if s.builtin else "fluidsynth" if s.fluidsynth else None,
                              lookahead=s.lookahead)
        self.player = LivePlayer(choice, on_event=self._roll_event, on_notice=self._notice)
        self.session = None  # the engine's GenerationSession: it holds every alternative, played or not
        self.listening = None  # the MIDI input when playing with the model
        self.duet = None  # the engine's Duet then
        self.end_reason = "finished"
        self._active = threading.Event()

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
            timing = DuetTiming(handovers=len(duet.handovers), notes_heard=duet.fed_notes,
                                last_answer_ms=1000 * waits[-1] if waits else None,
                                slowest_answer_ms=1000 * max(waits) if waits else None)
        return PerformanceTelemetry(scheduler, timing)

    def music_time(self) -> float:
        """Where the playhead is, in the events' music seconds."""
        return self.player.music_time()

    # ---- lifecycle (worker thread) --------------------------------------------------------------

    def prepare(self) -> None:
        """Open the output (starting FluidSynth if asked), the scheduler, and the input when listening."""
        self._active.set()
        self.player.open()
        s = self.settings
        if s.midi_in and not s.midi_file:
            from engine.midi.ports import open_input

            self.listening = open_input(s.api, None if s.midi_in == "virtual" else s.midi_in, virtual=s.midi_in == "virtual")

    def _notice(self, notice) -> None:
        if self.on_problem is not None and notice.kind != "behind":  # the timing panel shows falling behind
            self.on_problem(notice.text[0].upper() + notice.text[1:])

    def _roll_event(self, ev) -> None:
        if self.on_event is None or ev.channel == 9:  # the call-and-response click is not music
            return
        if ev.is_note_on:
            self.on_event(ev.time, "note_on", ev.data[1], ev.data[2], ev.channel)
        elif ev.is_note_off:
            self.on_event(ev.time, "note_off", ev.data[1], 0, ev.channel)

    def run(self, cancelled: Callable[[], bool]) -> None:
        """Generate (or read) events and play them until done, stopped or the port is gone for good."""
        from engine.midi.player import midi_file_chunks

        if self.settings.midi_file:
            source = midi_file_chunks(self.settings.midi_file)
        elif self.listening is not None:
            source = self._duet_events()
        else:
            source = self._generated_events()
        self.end_reason = self.player.play(source, cancelled, pending=self._input_pending)
        if self.duet is not None:
            self.duet.finish(self.player.music_time())

    def _input_pending(self) -> bool:
        duet = self.duet  # made by the source, once the model is loaded
        return duet is not None and duet.input_pending()

    def _duet_events(self) -> Iterator[tuple[list, float, int]]:
        import torch

        from engine.generate.duet import load_duet

        torch.set_num_threads(1)
        knobs = self.knobs.snapshot()
        sampling = SamplingConfig(temperature=knobs.temperature, top_p=knobs.top_p, seed=knobs.seed)
        self.duet, _ = load_duet(self.settings.checkpoint, sampling, self.settings.duet or DuetConfig(), self.player,
                                 self.listening.messages, on_human=self._roll_event, stop=self.player.stop_event,
                                 knobs=self.knobs.snapshot)
        self.session = self.duet.session
        yield from self.duet.chunks()

    def _generated_events(self) -> Iterator[tuple[list, float, int]]:
        import torch

        from engine.generate import live  # the engine's generation stream, as `--headless generate` plays it

        # one thread, as `--headless generate` defaults to: steadier per-token time, and the other
        # core stays free for the UI thread, the scheduler's sender and a training run
        torch.set_num_threads(1)
        yield from live.stream(
            checkpoint=self.settings.checkpoint,
            prompt=self.settings.prompt,
            prompt_bars=self.settings.prompt_bars,
            knobs=self.knobs.snapshot,
            stop=self.player.stop_event,
            on_session=self._keep_session,
        )

    def _keep_session(self, session) -> None:
        self.session = session

    def stop(self) -> None:
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
        (the names `--headless generate --alternatives K --out PATH` writes), the first the one heard.
        Saved while playing, a take ends at the playhead with every sounding note released there."""
        from engine.midi.events import take_until, write_midi_file
        from engine.midi.player import take_paths

        session = self.session
        until = self.music_time() if self.active else None
        if self.duet is not None:  # playing with the model: your part and its part, one track each
            if until is not None:
                self.duet.finish(until)
            return [self.duet.write(path)]
        if session is None:  # a MIDI file played back
            events = self.player.take()
            return [write_midi_file(events if until is None else take_until(events, until), path)]
        if not self.active:
            # a stopped stream never reached its tail: release what still sounds (idempotent)
            session.finish()
        paths = [Path(path)] if session.alternatives == 1 else take_paths(Path(path), session.alternatives, session.seed)
        # the session copies each row's events, so generation may go on while the files are written
        return [session.write_midi(row, out, until=until) for row, out in enumerate(paths)]


def write_take(settings: PerformanceSettings, knobs: KnobSettings, out: Path) -> list[Path]:
    """Generate a take with these settings and knobs without playing it, and write it as ``out``
    (with K alternatives, the names `take_paths` gives). Raises GenerationError or OSError."""
    from engine.generate.live import HARD_TOKEN_CAP, build_session, load_generator
    from engine.midi.player import take_paths

    model, tokenizer, _ = load_generator(settings.checkpoint)
    sampling = SamplingConfig(temperature=knobs.temperature, top_p=knobs.top_p, seed=knobs.seed)
    session = build_session(model, tokenizer, prompt=settings.prompt, prompt_bars=settings.prompt_bars,
                            sampling=sampling, alternatives=knobs.alternatives, bars=knobs.bars,
                            max_tokens=HARD_TOKEN_CAP)
    session.run()
    session.finish()
    paths = take_paths(out, session.alternatives, session.seed)
    return [session.write_midi(row, path) for row, path in enumerate(paths)]

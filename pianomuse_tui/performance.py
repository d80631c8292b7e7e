"""One live performance, run from the Generate pane's worker thread.

This is plumbing between engine parts, not music logic: the engine's generation session makes
tokens and timed MIDI events, the engine's ``LookaheadScheduler`` plays them from its own sender
thread, and this object only connects the two, passes the knobs (read before every step, so a
change takes effect on the next tokens), feeds the piano roll, and keeps what was played so it can
be saved. The same object plays a MIDI file (an audition) through the same scheduler.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator


@dataclass
class Knobs:
    """Sampling knobs shared between the UI thread (writes) and the performance thread (reads)."""

    temperature: float = 0.9
    top_p: float = 0.92
    alternatives: int = 1
    bars: int = 16
    seed: int | None = None
    version: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def update(self, **values: Any) -> None:
        with self._lock:
            for key, value in values.items():
                setattr(self, key, value)
            self.version += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {"temperature": self.temperature, "top_p": self.top_p, "alternatives": self.alternatives,
                    "bars": self.bars, "seed": self.seed, "version": self.version}


@dataclass
class PerformanceSettings:
    checkpoint: Path | None
    prompt: Path | None = None
    prompt_bars: str | None = None
    api: str = "auto"
    port: str | None = None
    virtual: bool = True
    fluidsynth: bool = False
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

    from .runwatch import latest_checkpoint, newest_run

    bundled = bundled_checkpoint()
    if bundled is not None:
        return bundled
    run = newest_run(Path("runs"))
    return latest_checkpoint(run) if run is not None else None


class Performance:
    def __init__(self, settings: PerformanceSettings, knobs: Knobs,
                 on_event: Callable[..., None] | None = None,
                 on_problem: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.knobs = knobs
        self.on_event = on_event
        self.on_problem = on_problem
        self.scheduler = None
        self.output = None
        self.synth = None
        self.played: list = []  # every MidiEvent submitted, for "save as MIDI"
        self.session = None  # the engine's GenerationSession: it holds every alternative, played or not
        self.end_reason = "finished"
        self._stop = threading.Event()
        self._active = threading.Event()
        self._lock = threading.Lock()

    # ---- state read by the UI -------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self._active.is_set()

    @property
    def has_events(self) -> bool:
        return bool(self.played)

    @property
    def alternatives(self) -> int:
        """How many alternatives this performance generates (row 0 is the one heard)."""
        session = self.session
        return session.alternatives if session is not None else 1

    @property
    def output_name(self) -> str:
        return getattr(self.output, "name", "?")

    def telemetry(self) -> dict:
        sched = self.scheduler
        return sched.telemetry().to_dict() if sched is not None else {}

    def music_time(self) -> float:
        """Where the playhead is, in the events' music seconds."""
        sched = self.scheduler
        return sched.music_time() if sched is not None else 0.0

    # ---- lifecycle (worker thread) --------------------------------------------------------------

    def prepare(self) -> None:
        """Open the output (starting FluidSynth if asked) and the scheduler."""
        from engine.midi import ports
        from engine.midi.scheduler import LookaheadScheduler

        self._active.set()
        s = self.settings
        if s.fluidsynth:
            from engine.midi.synth import start_fluidsynth

            self.synth = start_fluidsynth(api=s.api)
            self.output = ports.open_output(self.synth.api, self.synth.port_name)
        else:
            self.output = ports.open_output(s.api, s.port, virtual=s.virtual and not s.port)
        self.scheduler = LookaheadScheduler(self.output, lookahead=s.lookahead, on_port_lost=self._port_lost)

    def _port_lost(self, sentence: str) -> None:
        if self.on_problem is not None:
            self.on_problem(sentence)

    def run(self, cancelled: Callable[[], bool]) -> None:
        """Generate (or read) events and submit them ahead of the playhead until done or stopped."""
        sched = self.scheduler
        source = self._file_events() if self.settings.midi_file else self._generated_events()
        started = False
        try:
            for events, horizon, n_tokens in source:
                if self._stop.is_set() or cancelled():
                    self.end_reason = "stopped"
                    break
                self._submit(events, horizon, n_tokens)
                if not started and (horizon or 0.0) >= sched.lookahead:
                    # pre-roll: the clock starts once the first lookahead is generated
                    sched.start()
                    started = True
                while started and not sched.needs_more():
                    if self._stop.is_set() or cancelled():
                        break
                    sched.wait_for_room(0.02)
            else:
                if not started:
                    sched.start()
                sched.finish()
                while not sched.wait_done(0.05):
                    if self._stop.is_set() or cancelled():
                        self.end_reason = "stopped"
                        break
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def _submit(self, events: list, horizon: float | None, n_tokens: int) -> None:
        self.scheduler.submit(events, horizon)
        if n_tokens:
            self.scheduler.note_tokens(n_tokens)
        with self._lock:
            self.played.extend(events)
        if self.on_event is not None:
            for ev in events:
                if ev.is_note_on:
                    self.on_event(ev.time, "note_on", ev.data[1], ev.data[2], ev.channel)
                elif ev.is_note_off:
                    self.on_event(ev.time, "note_off", ev.data[1], 0, ev.channel)

    def _file_events(self) -> Iterator[tuple[list, float, int]]:
        """A MIDI file as timed events, in slices of half a second of music."""
        from engine.midi.events import note_off, note_on

        import symusic

        score = symusic.Score(str(self.settings.midi_file), ttype="second")
        events = []
        for track in score.tracks:
            channel = 9 if track.is_drum else 0
            for n in track.notes:
                events.append(note_on(n.time, n.pitch, n.velocity, channel))
                events.append(note_off(n.time + max(n.duration, 0.01), n.pitch, channel))
        events.sort()
        step, i = 0.5, 0
        t = step
        while i < len(events):
            chunk = []
            while i < len(events) and events[i].time < t:
                chunk.append(events[i])
                i += 1
            yield chunk, t, 0
            t += step

    def _generated_events(self) -> Iterator[tuple[list, float, int]]:
        import torch

        from engine.generate import live  # the engine's generation loop, shared with --headless generate

        # one thread, as `--headless generate` defaults to: steadier per-token time, and the other
        # core stays free for the UI thread, the scheduler's sender and a training run
        torch.set_num_threads(1)
        yield from live.stream(
            checkpoint=self.settings.checkpoint,
            prompt=self.settings.prompt,
            prompt_bars=self.settings.prompt_bars,
            knobs=self.knobs.snapshot,
            stop=self._stop,
            on_session=self._keep_session,
        )

    def _keep_session(self, session) -> None:
        self.session = session

    def stop(self) -> None:
        self._stop.set()

    def panic(self) -> None:
        if self.scheduler is not None:
            self.scheduler.panic()

    def close(self) -> None:
        """Stop the sender (pending note-offs + panic), close the port, stop FluidSynth. Idempotent."""
        self._stop.set()
        sched = self.scheduler
        if sched is not None:
            try:
                sched.stop(panic=True)
            except Exception:  # noqa: BLE001 - closing must go on
                pass
        if self.output is not None:
            try:
                self.output.close()
            except Exception:  # noqa: BLE001
                pass
        if self.synth is not None:
            self.synth.stop()
            self.synth = None
        self._active.clear()

    def save(self, path: Path) -> list[Path]:
        """What was played as ``path``; with K alternatives, every one as PATH-1.mid .. PATH-K.mid
        (the names `--headless generate --alternatives K --out PATH` writes), the first the one heard.
        Saved while playing, a take ends at the playhead with every sounding note released there."""
        from engine.midi.events import take_until, write_midi_file

        from .headless.generate_cmd import output_paths

        session = self.session
        until = self.music_time() if self.active and self.scheduler is not None else None
        if session is None:  # a MIDI file played back
            with self._lock:
                events = list(self.played)
            return [write_midi_file(events if until is None else take_until(events, until), path)]
        if not self.active:
            # a stopped stream never reached its tail: release what still sounds (idempotent)
            session.finish()
        paths = [Path(path)] if session.alternatives == 1 else output_paths(Path(path), session.alternatives, session.seed)
        # the session copies each row's events, so generation may go on while the files are written
        return [session.write_midi(row, out, until=until) for row, out in enumerate(paths)]

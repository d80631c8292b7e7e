"""The one live player: both faces (``--headless generate`` and the Generate pane) play through it.

A ``LivePlayer`` owns the output (an existing port, our virtual port, a FluidSynth it starts, or the
built-in piano), the ``LookaheadScheduler`` and the take. It pulls chunks ``(events, horizon, n_tokens)``
from any source (the model's stream, a MIDI file) at the pace of its lookahead:

- pre-roll: the clock starts once the first lookahead is buffered (or the source has ended);
- back-pressure: the source is not pulled while the lookahead is full;
- a source slower than the music is told once (``PlayerNotice("behind", ...)``); late notes count as underruns;
- port loss: the scheduler pauses, the player says so and tries to reopen the port for
  ``reconnect_wait`` seconds, then goes on, or ends with ``"port lost"``;
- drain: after the source ends, the queue plays out and the last note-offs leave before the port closes.

This module plays events; it never imports ``engine.generate`` (the stream comes in as an iterator).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .events import MidiEvent, held_note_releases, note_off, note_on
from .ports import PortError, open_output
from .scheduler import LookaheadScheduler

RECONNECT_WAIT_S = 60.0
LISTEN_POLL_S = 0.004  # how often a full lookahead is checked for input to react to
SOON_S = 0.002  # "at once" for an event queued late: just ahead of the playhead, so it is not an underrun
SYNTHS = (None, "builtin", "fluidsynth")
Chunk = tuple[list, float, int]  # (events, horizon in music seconds, tokens generated for them)


@dataclass
class OutputChoice:
    """Where a live take sounds. ``synth``: None (a port), "builtin" (the built-in piano, in this
    process) or "fluidsynth" (an external FluidSynth started on the MIDI system)."""

    api: str = "auto"
    port: str | None = None
    virtual: bool = False
    synth: str | None = None
    soundfont: Path | None = None
    lookahead: float = 0.5
    audio_driver: str = "auto"  # the built-in piano's sound output ("capture": into memory, for tests)

    def problem(self) -> str | None:
        """The sentence saying why this choice cannot work, before anything is opened; else None."""
        if self.synth not in SYNTHS:
            return f"unknown synth {self.synth!r}; use --synth builtin (the built-in piano) or --synth fluidsynth"
        if self.port and self.virtual:
            return "give either --port NAME or --virtual, not both"
        if self.lookahead <= 0:
            return "--lookahead must be a positive number of seconds, e.g. 0.5"
        if self.soundfont is not None and not Path(self.soundfont).is_file():
            return f"the soundfont {self.soundfont} does not exist; give an .sf2 file"
        return None


@dataclass
class PlayerNotice:
    """Something the user should hear about while playing; ``kind``: behind | port lost | reconnected | port gone
    (and a take's ``instead``: it plays on another output than the one it tried first)."""

    kind: str
    text: str


def take_paths(out: Path | None, alternatives: int, seed: int, suffix: str = ".mid") -> list[Path]:
    """The take's file names: OUT.mid for one alternative, OUT-1.mid .. OUT-K.mid for several.

    Without ``out``: pianomuse-seedSEED.mid ("seed" so the number never reads as an alternative's),
    then pianomuse-seedSEED-take2.mid and on, never overwriting an earlier default-named take. An
    ``out`` that is a folder gets those default names inside it.
    """
    if out is None or Path(out).is_dir():
        folder = Path(out) if out is not None else Path()
        out = folder / f"pianomuse-seed{seed}{suffix}"
        n = 2
        while out.exists():
            out = folder / f"pianomuse-seed{seed}-take{n}{suffix}"
            n += 1
    if out.suffix.lower() not in (".mid", ".midi"):
        out = out.with_suffix(suffix)
    if alternatives == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{k + 1}{out.suffix}") for k in range(alternatives)]


def midi_file_chunks(path: str | Path, step: float = 0.5) -> Iterator[Chunk]:
    """A MIDI file as timed events in slices of ``step`` seconds of music (an audition played live)."""
    import symusic

    score = symusic.Score(str(path), ttype="second")
    events = []
    for track in score.tracks:
        channel = 9 if track.is_drum else 0
        for n in track.notes:
            events.append(note_on(n.time, n.pitch, n.velocity, channel))
            events.append(note_off(n.time + max(n.duration, 0.01), n.pitch, channel))
    events.sort()
    i, t = 0, step
    while i < len(events):
        chunk = []
        while i < len(events) and events[i].time < t:
            chunk.append(events[i])
            i += 1
        yield chunk, t, 0
        t += step


class LivePlayer:
    """Plays chunks of timed events on one output; records what it played (the take)."""

    def __init__(self, choice: OutputChoice | None = None, *,
                 on_event: Callable[[MidiEvent], None] | None = None,
                 on_notice: Callable[[PlayerNotice], None] | None = None,
                 reconnect_wait: float = RECONNECT_WAIT_S,
                 scheduler: LookaheadScheduler | None = None) -> None:
        self.choice = choice or OutputChoice()
        self.on_event = on_event
        self.on_notice = on_notice
        self.reconnect_wait = float(reconnect_wait)
        self.output = scheduler.output if scheduler is not None else None
        self.synth = None  # a FluidSynth process or the built-in synth, when we started one
        self.scheduler = scheduler
        self.played: list[MidiEvent] = []
        self._lock = threading.Lock()
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._behind_told = False
        self._closed = False

    # ---- output ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Open the output (starting a synth when asked) and the scheduler; PortError says what to do."""
        c = self.choice
        problem = c.problem()
        if problem is not None:
            raise PortError(problem[0].upper() + problem[1:] + ".")
        try:
            if c.synth == "builtin":
                from .builtin_synth import BuiltinSynth

                self.synth = self.output = BuiltinSynth(soundfont=c.soundfont, driver=c.audio_driver)
            elif c.synth == "fluidsynth":
                from .synth import start_fluidsynth

                self.synth = start_fluidsynth(c.api, soundfont=c.soundfont)
                self.output = open_output(self.synth.api, self.synth.port_name)
            else:
                self.output = open_output(c.api, c.port, virtual=c.virtual or not c.port)
        except BaseException:
            self.close()
            raise
        self.scheduler = LookaheadScheduler(self.output, lookahead=c.lookahead, on_port_lost=self._port_lost)

    @property
    def output_name(self) -> str:
        return getattr(self.output, "name", "?")

    def _port_lost(self, sentence: str) -> None:
        self._lost.set()
        self._notice("port lost", f"{sentence.rstrip('.')} (PianoMuse reconnects by itself within {self.reconnect_wait:.0f} s).")

    def _notice(self, kind: str, text: str) -> None:
        if self.on_notice is not None:
            self.on_notice(PlayerNotice(kind, text))

    # ---- playing --------------------------------------------------------------------------------

    def play(self, chunks: Iterable[Chunk], stopped: Callable[[], bool] | None = None,
             pending: Callable[[], bool] | None = None) -> str:
        """Play every chunk; returns "finished", "stopped" (``stop()`` or ``stopped()``) or "port lost".

        ``pending``: the source has something to react to (a pianist's key): it is pulled then even
        with the lookahead full, so a listening source answers within a few milliseconds."""
        sched = self.scheduler
        if sched is None:
            raise RuntimeError("open() the player before play()")

        def halted() -> bool:
            return self._stop.is_set() or (stopped is not None and stopped())

        started = False
        source = iter(chunks)
        try:
            for events, horizon, n_tokens in source:
                if halted():
                    return "stopped"
                if self._lost.is_set() and not self._wait_for_port(halted):
                    return "stopped" if halted() else "port lost"
                self._submit(events, horizon, n_tokens)
                if not started and (horizon or 0.0) >= sched.lookahead:
                    sched.start()  # pre-roll: the clock starts once the first lookahead is generated
                    started = True
                if started and not self._behind_told and sched.falling_behind():
                    self._behind_told = True  # once: the telemetry counts every underrun
                    self._notice("behind", f"the model is falling behind the music (under {sched.lookahead / 4:.2f} s "
                                           "buffered; late notes count as underruns): fewer alternatives, a longer "
                                           "lookahead or a smaller model help")
                while started and not sched.needs_more() and not halted():
                    if self._lost.is_set() or (pending is not None and pending()):
                        break
                    sched.wait_for_room(0.02 if pending is None else LISTEN_POLL_S)
            if halted():
                return "stopped"
            sched.start()
            sched.finish()
            while not sched.wait_done(0.05):
                if halted():
                    return "stopped"
                if self._lost.is_set() and not self._wait_for_port(halted):
                    return "stopped" if halted() else "port lost"
            return "finished"
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
            for event in events:
                self.on_event(event)

    def take_back(self, channel: int, cut: float, latest: float, played: list[MidiEvent],
                  ends: dict[tuple[int, int], float] | None = None) -> list[MidiEvent]:
        """Stop a part (one channel) at ``cut`` (music seconds): its queued events from there on are
        dropped and its sounding notes end by ``latest`` (``held_note_releases``: at their own ends,
        or all at ``cut`` when ``latest == cut``; the pedal up as well). Returns those releases."""
        self.scheduler.cancel_from(cut, channel=channel, release=False)
        releases = held_note_releases([e for e in played if e.channel == channel], cut, latest, ends)
        self.play_now_or_later(releases)
        return releases

    def play_now_or_later(self, events: list[MidiEvent]) -> None:
        """Events decided after their chunk (a take-back's releases) join the queue without moving the
        source's horizon; those already due go out at once, after anything due before them that the
        sender has not sent yet (so a release never overtakes its note-on). The take and ``on_event``
        see them at their own times."""
        sched = self.scheduler
        soon = sched.music_time() + SOON_S
        sched.submit([e if e.time > soon else MidiEvent(soon, e.order, e.data) for e in events], horizon=0.0)
        with self._lock:
            self.played.extend(events)
        if self.on_event is not None:
            for event in events:
                self.on_event(event)

    def _wait_for_port(self, halted: Callable[[], bool]) -> bool:
        """The port vanished: keep everything, reopen it when it is back; False after ``reconnect_wait``."""
        deadline = time.monotonic() + self.reconnect_wait
        while time.monotonic() < deadline and not halted():
            try:
                self.scheduler.reconnect()
            except (PortError, OSError):
                time.sleep(0.5)
                continue
            self._lost.clear()
            self._notice("reconnected", "reconnected: playback continues")
            return True
        if not halted():
            self._notice("port gone", f"the MIDI port did not come back within {self.reconnect_wait:.0f} s; "
                                      "what was generated is kept")
        return False

    # ---- control and state (any thread) ---------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    @property
    def stop_event(self) -> threading.Event:
        """Set once the take should stop: a source that blocks (the model's stream) can watch it too."""
        return self._stop

    def panic(self) -> None:
        if self.scheduler is not None:
            self.scheduler.panic()

    def telemetry(self):
        return self.scheduler.telemetry() if self.scheduler is not None else None

    def music_time(self) -> float:
        return self.scheduler.music_time() if self.scheduler is not None else 0.0

    def take(self) -> list[MidiEvent]:
        """Every event played so far (a copy)."""
        with self._lock:
            return list(self.played)

    def close(self) -> None:
        """Stop the sender (pending note-offs + panic), close the port, stop the synth. Idempotent;
        the telemetry and the take stay readable."""
        self._stop.set()
        if self._closed:
            return
        self._closed = True
        for part, shut in ((self.scheduler, lambda s: s.stop(panic=True)), (self.output, lambda o: o.close()),
                           (self.synth, lambda s: s.stop())):
            if part is not None and hasattr(part, "close" if part is self.output else "stop"):
                try:
                    shut(part)
                except Exception:  # noqa: BLE001 - closing must go on
                    pass

    def __enter__(self) -> "LivePlayer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

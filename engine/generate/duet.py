"""Playing with the model: a pianist's MIDI input, tokenized live into the model's state, and three modes.

- continue: you play; when you stop for ``pause`` seconds, or press the takeover pedal/CC (CC67, the
  soft pedal, by default), the model continues from exactly what you played, its first note on the
  first grid step it can meet (the tokens still to feed and draw, as long as that many took lately;
  ``Duet._first_step``), and at least ``lead`` seconds later (none by default); when you play again it stops at
  once and listens, its held notes ending as ``takeback`` says ("finish": each where the model
  wrote it, at most a bar later, the pedal up by then; "release": at once; ``LivePlayer.take_back``).
- call-and-response: a click counts in ``count_in`` bars, then you play ``turn_bars`` bars and the
  model answers ``turn_bars`` bars, starting on the bar line, and so on; its last held notes end as
  ``takeback`` says.
- accompany: the model plays from the start in the register below ``split`` (the grammar mask limits
  its pitches), and your notes are fed into its state as they end.

``Duet.chunks()`` is the source the live player (``engine.midi.player.LivePlayer``) plays, so
pre-roll, back-pressure, port loss and the take work as for any live generation. Every note of
yours is fed with ``GenerationSession.force`` (the same RNN steps a generated token takes) once it
is released and every earlier-struck note is released too, so tokens go in onset order; while
you rest, the bar lines that pass go in as they come; at a handover the notes still held are
closed at that moment. Your notes play through the output on
``HUMAN_CHANNEL`` (``thru``), are recorded on their own track and reach the piano roll in another
colour. ``handovers`` records each takeover and the time of the model's first note after it.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from engine.midi.events import (
    CC_SUSTAIN,
    CONTROL_CHANGE,
    NOTE_OFF,
    NOTE_ON,
    MidiEvent,
    control_change,
    note_off,
    note_on,
    take_until,
)

from .defaults import HUMAN_CHANNEL, MODES, DuetConfig, tempo_from_taps  # noqa: F401  (re-exported)
from .listen import LiveEncoder
from .live import KnobFollower, build_session, load_generator
from .timeline import GenerationError

MODEL_CHANNEL = 0
CLICK_CHANNEL = 9
CLICK_HIGH, CLICK_LOW = 76, 77  # GM high and low wood block: the downbeat and the other beats
POLL_S = 0.004  # how long the source waits for input while the pianist has the floor
FIRST_NOTE_TOKENS = 2  # Pitch, Velocity: the duet's decoder strikes a note once its velocity is drawn (``strike_early``)
UNTIMED_TOKEN_S = 0.01  # a token's cost before the session has timed any (it times every token it feeds or draws)
HANDOFF_S = 0.002  # from the note's last token to it leaving: the chunk's way to the scheduler, its sender waking
BAR_SLACK_S = 0.05  # a bar line passed in silence goes into the state this long after (a key struck just before may be on its way)
TURN_PREPARE_S = 0.2  # call-and-response: the model takes the floor this long before its bar line


@dataclass
class Handover:
    at: float  # music seconds: the pause ran out, the CC came, or the turn's bar line
    reason: str  # "pause" | "cc" | "turn"
    earliest: float | None = None  # music seconds: the first note is on the first grid step at or after this
    first_note: float | None = None  # music seconds of the model's first note after it
    late: float = 0.0  # seconds the first note was ready after its time (it then left at once, that late)
    drawn: int | None = None  # tokens the model drew from the handover up to its first note-on (Pitch, Velocity)

    @property
    def latency(self) -> float | None:
        """From the handover to the first note leaving: its time on the grid, plus any lateness."""
        return None if self.first_note is None else self.first_note - self.at + self.late


@dataclass
class PlayedNote:
    onset: float
    release: float
    pitch: int
    velocity: int


@dataclass
class DuetTake:
    model: list[MidiEvent] = field(default_factory=list)  # what the model played (sent, never the cancelled rest)
    human: list[MidiEvent] = field(default_factory=list)  # your notes and pedal, on HUMAN_CHANNEL


class Duet:
    """The chunk source of a duet: reads the input, feeds the session, hands the floor back and forth."""

    def __init__(self, session, config: DuetConfig, player, messages: "queue.Queue",
                 on_human: Callable[[MidiEvent], None] | None = None, stop: threading.Event | None = None,
                 knobs: Callable[[], dict] | None = None) -> None:
        problem = config.problem()
        if problem:
            raise GenerationError(problem)
        if session.alternatives != 1:
            raise GenerationError("playing with the model uses one alternative; set alternatives to 1")
        self.session = session
        self.config = config
        self.player = player
        self.messages = messages
        self.on_human = on_human
        self.stop = stop or threading.Event()
        self.encoder = LiveEncoder(session.tables)
        self._follow_knobs = KnobFollower(session, knobs, bars=False)  # a duet has no length
        self.row = session.rows[0]
        self.row.decoder.strike_early = True  # a note-on leaves with its Velocity, not after its Duration
        session.endless = True
        self.t0 = 0.0  # music seconds where the sequence's time 0 (its first bar line) falls
        self.taps: list[float] = []  # tap_tempo: when the taps came
        self._tap_keys: set[int] = set()
        self.seconds_per_bar = 4 * 60.0 / config.tempo
        if not config.tap_tempo:
            self._start_grid(config.tempo, 0.0)
        self.take = DuetTake()
        self.handovers: list[Handover] = []
        self.takebacks: list[tuple[float, float]] = []  # (cut, where the sequence stands after it), music seconds
        self.model_has_floor = False
        self.fed_notes = 0
        self.feed_delays: list[float] = []  # per fed note: seconds from its release to its tokens in the state
        self._held: dict[int, tuple[float, int]] = {}  # pitch -> (onset, velocity) of keys down, not yet fed
        self._keys_down: set[int] = set()  # every key down now (for the pass-through and the take)
        self._done: list[PlayedNote] = []  # released, not yet fed
        self._pedal: list[tuple[float, bool]] = []  # pedal changes not yet fed
        self._last_activity: float | None = None
        self._played_since_handover = False
        self._takeover_at: float | None = None
        self._handover_at = 0.0
        self._next_click = 0
        self._turn_end: float | None = None  # call-and-response: where the model's turn ends
        self._marks: list[tuple[float, object]] = []  # (music seconds of the sequence's time, session mark)
        if config.mode == "accompany":
            session.limit_pitches(None, config.split - 1)

    def _start_grid(self, qpm: float, t0: float) -> None:
        """The sequence opens (bar, metre, tempo) with its first bar line at music time ``t0``."""
        self.t0 = t0
        self.row.decoder.origin = self.row.decoder.bar_origin = -t0  # model events on the session's clock
        self.session.force(self.encoder.header(qpm))
        self.seconds_per_bar = 4 * 60.0 / self.timeline.tempos[-1][1]  # the Tempo token's exact value

    def _tapped(self, t: float) -> None:
        """One tap of the count-in; the fourth sets the tempo (the taps' median spacing is a beat) and
        the first bar line one beat later."""
        self.taps.append(t)
        if len(self.taps) == 4:
            qpm = tempo_from_taps(self.taps)
            self._start_grid(qpm, t + 60.0 / qpm)

    @property
    def tapping(self) -> bool:
        return self.config.tap_tempo and len(self.taps) < 4

    def _seq(self, t: float) -> float:
        """Music seconds on the sequence's own time axis."""
        return t - self.t0

    @property
    def timeline(self):
        return self.row.decoder.timeline

    # ---- the source -------------------------------------------------------------------------------

    def play(self, stopped: Callable[[], bool] | None = None) -> str:
        """Play the duet through its player, pulled at once when the pianist plays (``pending``)."""
        return self.player.play(self.chunks(), stopped, pending=self.input_pending)

    def input_pending(self) -> bool:
        """Something came in on the input that the source has not read yet."""
        return not self.messages.empty()

    def chunks(self) -> Iterator[tuple[list, float, int]]:
        sched = self.player.scheduler
        sched.slip_on_underrun = False  # your notes and the model's share one clock: never shift it
        lookahead = sched.lookahead
        yield [], lookahead, 0  # the clock starts at once: there is nothing to pre-roll
        accompanying = False
        while not self.stop.is_set():
            now = sched.music_time()
            self._read_input(sched, block=not self.model_has_floor)
            now = sched.music_time()
            if self.tapping:
                yield [], now + lookahead / 2, 0
                continue
            if self.config.mode == "accompany" and not accompanying:
                accompanying = True  # the model plays from the first bar line on
                self._give_floor_to_model(max(now, self.t0), "start")
            clicks = self._clicks(now + lookahead)
            self._turns(now)
            if self.model_has_floor and self.config.mode != "call-and-response" and self._takeback_due():
                self._take_floor_back(now)
            elif not self.model_has_floor and self._handover_due(now):
                self._give_floor_to_model(now, self._handover_reason)
            if self.config.mode == "accompany" or not self.model_has_floor:
                self._feed_played(now, close_held=False)
            if not self.model_has_floor:
                self._keep_time(now)
            if self.model_has_floor and self.row.decoder.horizon < now + lookahead and self._model_may_play():
                self._follow_knobs()
                self._mark(now)
                result = self.session.step()
                events = self._model_events(result.events[0])
                yield clicks + events, self.row.decoder.horizon, 1
            else:
                yield clicks, max(now + lookahead / 2, self.row.decoder.horizon if self.model_has_floor else 0.0), 0

    # ---- input ------------------------------------------------------------------------------------

    def _read_input(self, sched, block: bool) -> None:
        try:
            first = self.messages.get(timeout=POLL_S) if block else self.messages.get_nowait()
        except queue.Empty:
            return
        batch = [first]
        while True:
            try:
                batch.append(self.messages.get_nowait())
            except queue.Empty:
                break
        for arrived, data in batch:
            self._heard(sched.music_time_at(arrived), tuple(data), sched)

    def _heard(self, t: float, data: tuple[int, ...], sched) -> None:
        status = data[0] & 0xF0
        event = None
        if self.tapping or (data[1:2] and data[1] in self._tap_keys):
            self._heard_tap(t, data, status, sched)
            return
        if status == NOTE_ON and len(data) > 2 and data[2] > 0:
            self._held[data[1]] = (t, data[2])
            self._keys_down.add(data[1])
            event = note_on(t, data[1], data[2], HUMAN_CHANNEL)
            if self.model_has_floor and self.config.mode == "continue":
                self._interrupted = True
        elif status in (NOTE_ON, NOTE_OFF) and len(data) > 2:
            if data[1] in self._held:  # not yet fed (a handover feeds held keys as ending then)
                onset, velocity = self._held.pop(data[1])
                self._done.append(PlayedNote(onset, t, data[1], velocity))
            if data[1] in self._keys_down:  # the sound and the take end when the key comes up
                self._keys_down.discard(data[1])
                event = note_off(t, data[1], HUMAN_CHANNEL)
        elif status == CONTROL_CHANGE and len(data) > 2:
            if data[1] == CC_SUSTAIN:
                self._pedal.append((t, data[2] >= 64))
                event = control_change(t, CC_SUSTAIN, data[2], HUMAN_CHANNEL)
            elif data[1] == self.config.takeover_cc and data[2] >= 64 and not self.model_has_floor:
                self._takeover_at = t
        if event is None:
            return
        self._last_activity = t
        self._played_since_handover = True
        self.take.human.append(event)
        if self.config.thru:
            sched.send_now(event.data)
        if self.on_human is not None:
            self.on_human(event)

    def _heard_tap(self, t: float, data: tuple[int, ...], status: int, sched) -> None:
        """A count-in tap: a key (heard through, not music) or the takeover pedal pressed."""
        key_down = status == NOTE_ON and len(data) > 2 and data[2] > 0
        if key_down and self.tapping:
            self._tap_keys.add(data[1])
        elif status in (NOTE_ON, NOTE_OFF) and len(data) > 1:
            self._tap_keys.discard(data[1])
        if self.config.thru and status in (NOTE_ON, NOTE_OFF):
            sched.send_now((status | HUMAN_CHANNEL,) + tuple(data[1:]))
        pedal = status == CONTROL_CHANGE and len(data) > 2 and data[1] == self.config.takeover_cc and data[2] >= 64
        if self.tapping and (key_down or pedal):
            self._tapped(t)

    _interrupted = False

    def _takeback_due(self) -> bool:
        due, self._interrupted = self._interrupted, False
        return due

    # ---- feeding your notes -------------------------------------------------------------------------

    def _feed_played(self, now: float, close_held: bool) -> None:
        """Feed released notes (and pedal changes) in onset order, up to the earliest key still down."""
        if close_held:
            for pitch, (onset, velocity) in list(self._held.items()):
                self._done.append(PlayedNote(onset, now, pitch, velocity))
            self._held.clear()
        waiting = min((onset for onset, _ in self._held.values()), default=float("inf"))
        ready = sorted((n for n in self._done if n.onset < waiting), key=lambda n: (n.onset, n.pitch))
        pedals = [p for p in self._pedal if p[0] < waiting]
        if not ready and not pedals:
            return
        self._done = [n for n in self._done if n.onset >= waiting]
        self._pedal = [p for p in self._pedal if p[0] >= waiting]
        items = [(n.onset, 1, n) for n in ready] + [(t, 0, down) for t, down in pedals]
        for t, kind, item in sorted(items, key=lambda x: (x[0], x[1])):
            if kind == 1:
                ids = self.encoder.note(self.timeline, self._seq(item.onset), self._seq(item.release), item.pitch, item.velocity)
                self.fed_notes += 1
            else:
                ids = self.encoder.pedal(self.timeline, self._seq(t), item)
            self.session.force(ids)
            if kind == 1:
                self.feed_delays.append(self.player.scheduler.music_time() - item.release)

    def _keep_time(self, now: float) -> None:
        """While you rest, the bar lines that pass go into the model's state as they come (once all you
        played is in), so a handover has little left to feed before the model's first note."""
        if not (self._held or self._done or self._pedal):
            self.session.force(self.encoder.bar_lines(self.timeline, self._seq(now - BAR_SLACK_S)))

    # ---- the floor ----------------------------------------------------------------------------------

    _handover_reason = "pause"
    _drawn_before = 0  # the session's tokens generated at the latest handover

    def _handover_due(self, now: float) -> bool:
        mode = self.config.mode
        if mode == "continue":
            if self._takeover_at is not None:
                self._handover_reason, self._handover_at = "cc", self._takeover_at
                self._takeover_at = None
                return True
            if self._held or not self._played_since_handover or self._last_activity is None:
                return False
            if now - self._last_activity >= self.config.pause:
                self._handover_reason, self._handover_at = "pause", self._last_activity + self.config.pause
                return True
        return False

    def _give_floor_to_model(self, now: float, reason: str) -> None:
        """Feed everything you played (held keys end now), move the sequence to the first grid step
        the model can meet, at least ``lead`` after ``now`` (``_first_step``), and let it draw from there."""
        at = self._handover_at if reason in ("pause", "cc") else now
        self._end_tail(now)
        self._feed_played(now, close_held=True)
        timeline = self.timeline
        if reason == "turn":
            earliest = self._turn_start
            tick = self.encoder.snap(timeline, self.encoder.tick_at(timeline, self._seq(earliest), up=True), up=True)
        else:
            tick, earliest = self._first_step(now + self.config.lead)
        self.session.force(self.encoder.advance(timeline, tick))
        self.session.note_now = reason != "start"  # the first note falls on that step, not later
        self.model_has_floor = True
        self._played_since_handover = False
        if reason != "start":
            self.handovers.append(Handover(at if reason != "turn" else self._turn_start, reason, earliest=earliest))
            self._drawn_before = self.session.tokens_generated

    def _first_step(self, earliest: float) -> tuple[int, float]:
        """The first grid step at or after ``earliest`` (music seconds) that the model can meet: the
        tokens that move the sequence there and those of the note itself, as long as that many took
        lately (``GenerationSession.seconds_for``), are done before it, counted from the clock now
        (after feeding what you played). On a slow or busy machine the first note comes a step or
        more later, on time. Returns the step (ticks) and the earliest time it had to be at or after."""
        timeline, encoder = self.timeline, self.encoder
        tick = max(timeline.tick, encoder.snap(timeline, encoder.tick_at(timeline, self._seq(earliest), up=True), up=True))
        ready = self.player.scheduler.music_time() + HANDOFF_S
        last = tick + 4 * timeline.ticks_per_bar  # a token costing over a bar: the note comes late (and says so)
        while True:
            tokens = len(encoder.advance(timeline, tick)) + FIRST_NOTE_TOKENS
            cost = self.session.seconds_for(tokens)
            needed = ready + (tokens * UNTIMED_TOKEN_S if cost is None else cost)
            if tick >= last or timeline.seconds(tick) + self.t0 >= needed:
                return tick, max(earliest, needed)
            tick = encoder.snap(timeline, tick + 1, up=True)

    def _mark(self, now: float) -> None:
        """Remember the session between notes, so a take-back can forget what was generated ahead."""
        timeline = self.timeline
        if timeline.note_stage != 0:
            return
        self._marks.append((timeline.seconds(timeline.tick) + self.t0, self.session.mark()))
        while len(self._marks) > 2 and self._marks[1][0] < now - 1.0:
            self._marks.pop(0)  # long played: a take-back never goes that far

    def _forget_unplayed(self, cut: float) -> None:
        """Return the session to the last mark at or before ``cut``: notes the model generated ahead
        but never played leave its state, so it knows exactly what was heard."""
        kept = [m for t, m in self._marks if t <= cut + 1e-9]
        if kept:
            self.session.restore(kept[-1])
        self._marks.clear()

    def _take_floor_back(self, now: float, at: float | None = None) -> None:
        """You play again (or the model's turn ends): drop what the model has not played yet (from
        the output and from its state); its held notes end as ``takeback`` says (by the cut, or
        where it wrote them but at most a bar later)."""
        cut = now if at is None else at
        latest = cut + self.seconds_per_bar if self.config.takeback == "finish" else cut
        self._complete_struck_note(cut)
        self._end_model_part(cut, latest, self._written_ends(cut))
        decoder = self.row.decoder
        self._forget_unplayed(cut)
        self.takebacks.append((cut, self.timeline.seconds(self.timeline.tick) + self.t0))
        decoder._pending_offs.clear()  # ended by the releases; the tokens keep their durations
        decoder._sounding.clear()
        self.model_has_floor = False

    def _complete_struck_note(self, cut: float) -> None:
        """A note struck at its Velocity whose Duration is not drawn yet: draw it (the grammar allows
        nothing else), so the session can be marked with the note in it and a take-back after its
        onset keeps in the state the note that sounded (and ends it where the model wrote it)."""
        if self.timeline.note_stage != 2:
            return
        events = self.session.step().events[0]
        if events:
            self.player.play_now_or_later(events)
            self.take.model.extend(events)
        self._mark(cut)

    _tail_end = 0.0  # music seconds: where the last release of the latest take-back falls

    def _end_model_part(self, cut: float, latest: float, ends: dict | None = None) -> None:
        """The model's part stops at ``cut``: on the output and in the take, its notes end by ``latest``."""
        releases = self.player.take_back(MODEL_CHANNEL, cut, latest, self.take.model, ends)
        self.take.model = [e for e in self.take.model if e.time < cut] + releases
        self._tail_end = max((e.time for e in releases), default=cut)

    def _written_ends(self, cut: float) -> dict[tuple[int, int], float]:
        """Where the model's notes sounding at ``cut`` end by their Duration tokens: per pitch, from its
        last note-on before ``cut`` (a unison doubling merged into it may carry it further)."""
        decoder, ends = self.row.decoder, {}
        struck: dict[int, float] = {}
        for e in self.take.model:
            if e.is_note_on and e.time < cut:
                struck[e.data[1]] = max(e.time, struck.get(e.data[1], e.time))
        for note in decoder.notes:
            onset = decoder._time(note.onset)
            if note.pitch in struck and struck[note.pitch] - 1e-6 <= onset < cut:
                end = decoder._time(note.onset + note.duration)
                ends[(MODEL_CHANNEL, note.pitch)] = max(end, ends.get((MODEL_CHANNEL, note.pitch), end))
        return ends

    def _end_tail(self, now: float) -> None:
        """The model takes the floor while its last notes are still finishing: they end now."""
        if self._tail_end > now:
            self._end_model_part(now, now)

    def _model_may_play(self) -> bool:
        return self._turn_end is None or self.row.decoder.horizon < self._turn_end

    def _model_events(self, events: list[MidiEvent]) -> list[MidiEvent]:
        if self._turn_end is not None:
            events = [e for e in events if e.time < self._turn_end or e.is_note_off]
        for event in events:
            if event.is_note_on and self.handovers and self.handovers[-1].first_note is None:
                handover = self.handovers[-1]
                handover.first_note = event.time
                handover.late = max(0.0, self.player.scheduler.music_time() - event.time)
                handover.drawn = self.session.tokens_generated - self._drawn_before
        self.take.model.extend(events)
        return events

    # ---- call-and-response: turns and the click --------------------------------------------------------

    _turn_start = 0.0

    def _turns(self, now: float) -> None:
        if self.config.mode != "call-and-response":
            return
        bar = self.seconds_per_bar
        first = self.t0 + self.config.count_in * bar
        turn = self.config.turn_bars * bar
        if now < first:
            return
        k = int((now - first + TURN_PREPARE_S) // turn)  # the model's turn is prepared a little early
        model_turn = k % 2 == 1
        start = first + k * turn
        if model_turn and not self.model_has_floor and self._turn_end != start + turn:
            self._turn_start, self._turn_end = start, start + turn
            self._give_floor_to_model(now, "turn")
        elif not model_turn and self.model_has_floor and now >= start:
            self._take_floor_back(now, at=start)
            self._turn_end = None

    def _clicks(self, until: float) -> list[MidiEvent]:
        if self.config.mode != "call-and-response" or not self.config.click:
            return []
        beat = self.seconds_per_bar / 4
        out = []
        while self.t0 + self._next_click * beat < until:
            t = self.t0 + self._next_click * beat
            pitch = CLICK_HIGH if self._next_click % 4 == 0 else CLICK_LOW
            out += [note_on(t, pitch, 90, CLICK_CHANNEL), note_off(t + 0.05, pitch, CLICK_CHANNEL)]
            self._next_click += 1
        return out

    # ---- results ----------------------------------------------------------------------------------------

    def finish(self, end: float) -> DuetTake:
        """The take up to ``end`` (music seconds): both parts, every note closed."""
        self.take.model = take_until(self.take.model, end)
        self.take.human = take_until(self.take.human, end)
        return self.take

    def write(self, path) -> Path:
        """The take as one .mid: track "PianoMuse" (the model) and track "You" (your notes), at the session's tempo."""
        from engine.midi.events import MeterMap, write_take

        meter = MeterMap(tempos=[(0.0, self.timeline.tempos[-1][1])], time_signatures=[(0.0, 4, 4)])
        return write_take({"PianoMuse": self.take.model, "You": self.take.human}, path, meter=meter)

    def latencies(self) -> list[float]:
        """Seconds from each handover to the model's first note after it."""
        return [h.latency for h in self.handovers if h.latency is not None]


def load_duet(checkpoint, sampling, config: DuetConfig, player, messages, **options) -> tuple[Duet, Path]:
    """The model of ``checkpoint`` (None: the bundled one) ready to play with: its session drawing
    with ``sampling``, listening to ``messages`` and playing through ``player``; both faces start a
    duet here. ``options`` go to ``Duet`` (on_human, stop, knobs). Returns the duet and the .pth."""
    model, tokenizer, pth = load_generator(checkpoint)
    session = build_session(model, tokenizer, sampling=sampling)
    return Duet(session, config, player, messages, **options), pth


"""The real-time scheduler: generation runs ahead into a lookahead queue, a sender thread plays it on time.

Every event carries an absolute music time; its wall-clock target is ``origin + time`` on a
monotonic clock, so time never drifts however many events play. The sender sleeps until shortly
before a target, then spins to it. The producer (the model) is never waited on by the sender: when
it falls behind, the buffer shrinks, telemetry says so, and a late event counts as an underrun and
shifts the origin so the rhythm stays intact instead of notes piling up.
"""
from __future__ import annotations

import atexit
import heapq
import itertools
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Protocol

from engine.signals import signals_held

from .events import MidiEvent, NoteTracker, note_off, panic_messages


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep_until(self, target: float, interrupt: threading.Event) -> bool:
        """Return True at ``target``, or False early when ``interrupt`` is set."""


class MonotonicClock:
    """time.monotonic, sleeping until ``spin`` seconds before a target, then spinning to it."""

    def __init__(self, spin: float = 0.0015) -> None:
        self.spin = spin

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, target: float, interrupt: threading.Event) -> bool:
        while True:
            remaining = target - time.monotonic()
            if remaining <= self.spin:
                break
            if interrupt.wait(remaining - self.spin):
                return False
        while time.monotonic() < target:
            time.sleep(0)  # yields the GIL so the model thread keeps running during the spin
        return True


class OutputPort(Protocol):
    name: str

    def send(self, data: tuple[int, ...]) -> None: ...

    def is_alive(self) -> bool: ...

    def reopen(self) -> None: ...


@dataclass
class SchedulerTelemetry:
    events_sent: int
    events_queued: int
    lateness_p50_ms: float
    lateness_p99_ms: float
    lateness_max_ms: float
    buffer_s: float
    lookahead_s: float
    underruns: int
    tokens_per_s: float
    notes_sounding: int
    watchdog_releases: int
    port_state: str  # "ok" | "lost" | "paused" | "stopped"
    falling_behind: bool
    realtime: bool = False  # the sender thread got real-time OS priority

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"events {self.events_sent}, lateness p50 {self.lateness_p50_ms:.2f} ms / p99 {self.lateness_p99_ms:.2f} ms / "
            f"max {self.lateness_max_ms:.2f} ms, buffer {self.buffer_s:.2f} s of {self.lookahead_s:.2f} s, "
            f"underruns {self.underruns}, {self.tokens_per_s:.0f} tokens/s, stuck notes released {self.watchdog_releases}, port {self.port_state}"
            + (", real-time priority" if self.realtime else "")
        )


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class LookaheadScheduler:
    """Plays MidiEvents on ``output`` at ``origin + event.time``.

    Producer side: ``start()``, ``submit(events, horizon)``, ``needs_more()`` / ``wait_for_room()``,
    ``note_tokens(n)``, ``finish()``, ``wait_done()``. Control: ``pause()``, ``resume()``, ``stop()``,
    ``panic()``, ``reconnect()``. ``telemetry()`` is safe to call from any thread.
    """

    def __init__(
        self,
        output: OutputPort,
        lookahead: float = 0.5,
        clock: Clock | None = None,
        max_note_seconds: float = 12.0,
        start_delay: float = 0.05,
        port_check_interval: float = 0.5,
        on_port_lost: Callable[[str], None] | None = None,
        slip_on_underrun: bool = True,
        record: bool = False,
        realtime: bool = True,
    ) -> None:
        if lookahead <= 0:
            raise ValueError("lookahead must be positive (seconds of music generated ahead, e.g. 0.5)")
        self.output = output
        self.lookahead = float(lookahead)
        self.clock = clock or MonotonicClock()
        self.max_note_seconds = float(max_note_seconds)
        self.start_delay = float(start_delay)
        self.port_check_interval = float(port_check_interval)
        self.on_port_lost = on_port_lost
        self.slip_on_underrun = slip_on_underrun
        self.record = record
        self.realtime = realtime
        self.realtime_granted = False
        # (target, sent, data) of every sent event when ``record`` is on; tests and benchmarks read it.
        self.sent_log: list[tuple[float, float, tuple[int, ...]]] = []

        self._heap: list[tuple[float, int, int, MidiEvent]] = []
        self._seq = itertools.count()
        self._lock = threading.RLock()
        self._send_lock = threading.Lock()
        self._wakeup = threading.Event()
        self._room = threading.Condition(self._lock)
        self._done = threading.Event()
        self._tracker = NoteTracker()
        self._lateness: list[float] = []
        self._origin: float | None = None
        self._horizon = 0.0
        self._paused_at: float | None = None
        self._pause_reason = ""
        self._finished = False
        self._stopping = False
        self._underruns = 0
        self._watchdog_releases = 0
        self._tokens = 0
        self._tokens_since: float | None = None
        self._thread: threading.Thread | None = None
        self._monitor: threading.Thread | None = None
        self.error: BaseException | None = None

    # ----- producer side -----
    def start(self) -> None:
        if self._thread is not None:
            return
        # A shorter GIL switch interval bounds how long the model thread can keep the sender waiting.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
        with self._lock:
            self._origin = self.clock.now() + self.start_delay
        # A program that ends without stop() (sys.exit, an uncaught error) still releases its notes.
        atexit.register(self.stop)
        self._thread = threading.Thread(target=self._run_sender, name="pianomuse-midi-sender", daemon=True)
        self._thread.start()
        if self.port_check_interval > 0:
            self._monitor = threading.Thread(target=self._run_monitor, name="pianomuse-port-watch", daemon=True)
            self._monitor.start()

    def submit(self, events: Iterable[MidiEvent], horizon: float | None = None) -> None:
        """Queue events (music seconds). ``horizon``: how far the producer has generated, even through rests."""
        events = list(events)
        with self._lock:
            if self._stopping:
                return
            if self._origin is not None and self._paused_at is None and events:
                now = self.clock.now()
                earliest = min(e.time for e in events)
                late = now - (self._origin + earliest)
                if late > 0:
                    self._underruns += 1
                    if self.slip_on_underrun:
                        self._origin += late
            for event in events:
                heapq.heappush(self._heap, (event.time, event.order, next(self._seq), event))
            latest = max((e.time for e in events), default=self._horizon)
            self._horizon = max(self._horizon, latest if horizon is None else horizon)
            self._done.clear()
        self._wakeup.set()

    def note_tokens(self, count: int) -> None:
        with self._lock:
            if self._tokens_since is None:
                self._tokens_since = self.clock.now()
            self._tokens += count

    def buffered_seconds(self) -> float:
        """Music already generated but not yet due (seconds of wall time ahead of now)."""
        with self._lock:
            if self._origin is None:
                return self._horizon
            if self._paused_at is not None:
                return self._horizon - self._paused_at
            return self._origin + self._horizon - self.clock.now()

    def music_time(self) -> float:
        """Where the playhead is, in the events' music seconds (0 before ``start``)."""
        with self._lock:
            if self._origin is None:
                return 0.0
            if self._paused_at is not None:
                return self._paused_at
            return self.clock.now() - self._origin

    def falling_behind(self) -> bool:
        """The producer is not keeping up: under a quarter of the lookahead is left before the playhead."""
        with self._lock:
            return self._behind(self.buffered_seconds())

    def _behind(self, buffer_s: float) -> bool:
        return not self._finished and self._origin is not None and buffer_s < self.lookahead / 4

    def needs_more(self) -> bool:
        return not self._stopping and self.buffered_seconds() < self.lookahead

    def wait_for_room(self, timeout: float = 0.05) -> bool:
        """Block the producer (never the sender) until the buffer has room or ``timeout`` passes."""
        if self.needs_more():
            return True
        time.sleep(min(timeout, max(0.001, self.buffered_seconds() - self.lookahead)))
        return self.needs_more()

    def finish(self) -> None:
        """The producer is done; ``wait_done`` returns once the queue has played out."""
        with self._lock:
            self._finished = True
            if not self._heap:
                self._done.set()
        self._wakeup.set()

    def wait_done(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    # ----- control -----
    def pause(self, reason: str = "paused") -> None:
        with self._lock:
            if self._paused_at is not None or self._origin is None:
                return
            self._paused_at = self.clock.now() - self._origin
            self._pause_reason = reason
        self._wakeup.set()
        self.panic()

    def resume(self) -> None:
        with self._lock:
            if self._paused_at is None:
                return
            # Re-anchor so the queued music continues from where it stopped.
            self._origin = self.clock.now() + self.start_delay - self._paused_at
            self._paused_at = None
            self._pause_reason = ""
        self._wakeup.set()

    def reconnect(self) -> None:
        """Reopen the output (e.g. after the synth came back) and continue the paused performance."""
        self.output.reopen()
        self.resume()

    def send_now(self, data: tuple[int, ...]) -> None:
        """Send one message at once, outside the queue (a pianist's notes passed through); tracked, so
        panic releases it too. A dead port drops it (the monitor reports the loss)."""
        try:
            self._send(tuple(data))
        except Exception:  # noqa: BLE001
            pass

    def cancel_from(self, music_time: float, channel: int | None = None, release: bool = True) -> list[MidiEvent]:
        """Drop queued events due at or after ``music_time`` (of ``channel``, or all), release the notes
        of that channel still sounding (unless ``release`` is False: the caller times their ends), and
        return what was dropped (it will never play). The producer's horizon comes back to
        ``music_time`` too: what it had generated past it is void, so it is asked for more at once
        (a stale horizon would keep it waiting, as if the lookahead were still full)."""
        with self._lock:
            self._horizon = min(self._horizon, music_time)
            keep, dropped = [], []
            for item in self._heap:
                event = item[3]
                (dropped if event.time >= music_time and (channel is None or event.channel == channel) else keep).append(item)
            heapq.heapify(keep)
            self._heap = keep
            if self._finished and not self._heap:
                self._done.set()
        if not release:
            return [item[3] for item in dropped]
        with self._send_lock:
            sounding = [(ch, pitch) for ch, pitch in self._tracker.sounding() if channel is None or ch == channel]
        for ch, pitch in sounding:
            self.send_now(note_off(0.0, pitch, ch).data)
        return [item[3] for item in dropped]

    def music_time_at(self, monotonic_time: float) -> float:
        """A monotonic-clock instant (e.g. when a MIDI message arrived) in the events' music seconds."""
        with self._lock:
            if self._origin is None:
                return 0.0
            if self._paused_at is not None:
                return self._paused_at
            return monotonic_time - self._origin

    def panic(self) -> None:
        """Release every sounding note, then sustain off and All Notes Off on all channels."""
        with self._send_lock:
            messages = panic_messages(self._tracker)
            self._tracker.clear()
            for data in messages:
                try:
                    self.output.send(data)
                except Exception:  # noqa: BLE001 - a dead port cannot sound notes either
                    break

    def stop(self, panic: bool = True) -> None:
        """Cancel: drop the queue, release every note (panic), then stop the threads.

        The notes go first and signals are held meanwhile: a second Ctrl-C or SIGTERM arriving
        while the threads wind down (up to a port check's sleep) must not leave notes sounding.
        A note-on the sender had already begun to send when the stop came is released after it.
        """
        with signals_held():
            atexit.unregister(self.stop)
            with self._lock:
                self._stopping = True
                self._heap.clear()
                self._done.set()
            self._wakeup.set()
            if panic:
                self.panic()
            for thread in (self._thread, self._monitor):
                if thread is not None and thread is not threading.current_thread():
                    thread.join(timeout=2.0)
            if panic:
                self._release_sounding()

    def _release_sounding(self) -> None:
        with self._send_lock:
            for channel, pitch in self._tracker.sounding():
                try:
                    self.output.send(note_off(0.0, pitch, channel).data)
                except Exception:  # noqa: BLE001 - a dead port cannot sound notes either
                    break
            self._tracker.clear()

    def __enter__(self) -> "LookaheadScheduler":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop(panic=True)

    # ----- telemetry -----
    def telemetry(self) -> SchedulerTelemetry:
        with self._lock:
            lateness = sorted(self._lateness)
            buffer_s = self.buffered_seconds()
            if self._stopping:
                state = "stopped"
            elif self._pause_reason == "port lost":
                state = "lost"
            elif self._paused_at is not None:
                state = "paused"
            else:
                state = "ok"
            elapsed = (self.clock.now() - self._tokens_since) if self._tokens_since is not None else 0.0
            return SchedulerTelemetry(
                events_sent=len(self._lateness),
                events_queued=len(self._heap),
                lateness_p50_ms=percentile(lateness, 0.5) * 1e3,
                lateness_p99_ms=percentile(lateness, 0.99) * 1e3,
                lateness_max_ms=(lateness[-1] * 1e3) if lateness else 0.0,
                buffer_s=max(0.0, buffer_s),
                lookahead_s=self.lookahead,
                underruns=self._underruns,
                tokens_per_s=(self._tokens / elapsed) if elapsed > 0 else 0.0,
                notes_sounding=self._tracker.count,
                watchdog_releases=self._watchdog_releases,
                port_state=state,
                falling_behind=self._behind(buffer_s),
                realtime=self.realtime_granted,
            )

    # ----- threads -----
    def _send(self, data: tuple[int, ...]) -> None:
        with self._send_lock:
            self.output.send(data)
            self._tracker.observe(data, self.clock.now())

    def _next_deadline(self) -> tuple[float | None, MidiEvent | None]:
        """The earlier of the next event's target and the watchdog's next check."""
        head = self._heap[0][3] if self._heap and self._paused_at is None else None
        target = (self._origin + head.time) if head is not None else None
        onset = self._tracker.earliest_onset()
        if onset is not None and self.max_note_seconds > 0:
            watchdog_at = onset + self.max_note_seconds
            if target is None or watchdog_at < target:
                return watchdog_at, None
        return target, head

    def _release_stuck_notes(self) -> None:
        with self._send_lock:
            stuck = self._tracker.held_longer_than(self.max_note_seconds, self.clock.now())
        for channel, pitch in stuck:
            self._send(note_off(0.0, pitch, channel).data)
            with self._lock:
                self._watchdog_releases += 1

    def _raise_priority(self) -> None:
        """Ask the OS to run the sender before ordinary threads (Linux SCHED_FIFO); no-op when not allowed."""
        if not self.realtime or not hasattr(os, "sched_setscheduler"):
            return
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))  # 0: this thread, on Linux
            self.realtime_granted = True
        except (OSError, AttributeError):
            pass

    def _run_sender(self) -> None:
        self._raise_priority()
        try:
            while True:
                with self._lock:
                    if self._stopping:
                        return
                    deadline, head = self._next_deadline()
                    self._wakeup.clear()
                if deadline is None:
                    self._wakeup.wait(0.05)
                    continue
                if not self.clock.sleep_until(deadline, self._wakeup):
                    continue  # something earlier was queued, or pause/stop: look again
                if head is None:
                    self._release_stuck_notes()
                    continue
                with self._lock:
                    if self._stopping or self._paused_at is not None or not self._heap or self._heap[0][3] is not head:
                        continue
                    heapq.heappop(self._heap)
                    target = self._origin + head.time
                try:
                    self._send(head.data)
                except Exception:  # noqa: BLE001 - the port vanished under us
                    with self._lock:
                        heapq.heappush(self._heap, (head.time, head.order, next(self._seq), head))
                    self._port_lost()
                    continue
                sent = self.clock.now()
                with self._lock:
                    self._lateness.append(sent - target)
                    if self.record:
                        self.sent_log.append((target, sent, head.data))
                    if self._finished and not self._heap:
                        self._done.set()
        except BaseException as err:  # noqa: BLE001  # pragma: no cover - reported, and the notes still get released
            self.error = err
            self.panic()

    def _port_lost(self) -> None:
        with self._lock:
            already = self._pause_reason == "port lost"
        if already:
            return
        self.pause("port lost")
        if self.on_port_lost is not None:
            self.on_port_lost(f"The MIDI port {self.output.name} disappeared; playback is paused until it is back.")

    def _run_monitor(self) -> None:
        while not self._stopping:
            time.sleep(self.port_check_interval)
            if self._stopping:
                return
            with self._lock:
                lost = self._pause_reason == "port lost"
            if not lost and not self.output.is_alive():
                self._port_lost()

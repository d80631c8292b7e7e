"""A private JACK server (dummy driver) for tests, a JACK MIDI port that records what it receives, and
a tiny random-weight checkpoint for the live-generation tests that play through them.

Each server gets a unique name and is selected through JACK_DEFAULT_SERVER, so parallel test runs
and a user's own JACK never collide. Importable from tests as ``from jack_server import ...``.
"""
from __future__ import annotations

import ctypes
import os
import signal
import shutil
import subprocess
import threading
import time
import uuid

import pytest


def _end_with_parent() -> None:
    """In the forked jackd, before exec: ask Linux to send it SIGTERM when the test process dies, so a
    killed test run (a timeout, a SIGKILL) leaves no server behind holding one of JACK's 8 server slots
    (jackd unregisters on SIGTERM)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the context manager still stops it on a normal exit


class JackServer:
    """jackd with the dummy driver. Its log is read all the time (a pipe nobody reads fills up and
    stalls the server's logging) and every XRun in it is kept with its time: in an XRun a client
    (our sender or the test's receiver) did not finish its cycle on a loaded machine, and JACK drops
    that cycle's MIDI, so tests can tell a message JACK lost from one we never sent."""

    current: "JackServer | None" = None  # the server JACK_DEFAULT_SERVER names now

    def __init__(self, period: int = 64, rate: int = 48000) -> None:
        self.name = f"pianomuse-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.period, self.rate = period, rate
        self.process: subprocess.Popen | None = None
        self._saved_env: dict[str, str | None] = {}
        self._previous: JackServer | None = None
        self.log: list[tuple[float, str]] = []  # (time.monotonic(), line) of jackd's stderr
        self._log_lock = threading.Lock()

    def _pump_log(self) -> None:
        for raw in self.process.stderr:
            with self._log_lock:
                self.log.append((time.monotonic(), raw.decode(errors="replace").rstrip()))

    def xruns_since(self, since: float) -> int:
        """XRuns jackd reported at or after ``since`` (time.monotonic()); they are logged a moment late."""
        time.sleep(0.05)
        with self._log_lock:
            return sum(1 for at, line in self.log if at >= since and "XRun" in line)

    def log_tail(self, lines: int = 20) -> str:
        with self._log_lock:
            return "\n".join(line for _, line in self.log[-lines:])

    def __enter__(self) -> "JackServer":
        if shutil.which("jackd") is None:
            raise RuntimeError("jackd is not installed: apt install jackd2 (CI's .ci/run does)")
        for key, value in (("JACK_DEFAULT_SERVER", self.name), ("JACK_NO_START_SERVER", "1")):
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        self.process = subprocess.Popen(
            ["jackd", "-n", self.name, "-d", "dummy", "-r", str(self.rate), "-p", str(self.period)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_end_with_parent,
        )
        threading.Thread(target=self._pump_log, name="jackd-log", daemon=True).start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                time.sleep(0.1)  # the rest of its log
                log = self.log_tail()[-500:]
                if "Too many servers" in log:  # JACK keeps 8 server slots; a killed jackd keeps its slot
                    log += (" (stale servers of killed runs hold JACK's 8 server slots: stop them with "
                            "`pkill -TERM jackd`; with no jackd left running, remove /dev/shm/jack-shm-registry)")
                raise RuntimeError("jackd exited: " + log)
            if subprocess.run(["jack_lsp", "-s", self.name], capture_output=True).returncode == 0:
                self._previous, JackServer.current = JackServer.current, self
                return self
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("jackd did not come up within 10 s")

    def __exit__(self, *exc) -> None:
        if JackServer.current is self:
            JackServer.current = self._previous
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class MidiReceiver:
    """A JACK MIDI input port ``<client>:recv`` that records every message with its arrival time.

    Times come from JACK's own clock (RtMidi stamps each message in the JACK process cycle, in
    microseconds), so a busy Python interpreter does not blur the measurement: the first message is
    at 0 and each later one at the sum of the deltas. A drain thread empties RtMidi's queue.
    """

    def __init__(self, client: str = "pm-test-recv") -> None:
        import rtmidi

        self.client = client
        self.port_name = f"{client}:recv"
        self.messages: list[tuple[float, tuple[int, ...]]] = []
        self._lock = threading.Lock()
        self._clock = 0.0
        self.server = JackServer.current
        self.opened_at = self._last_pull = time.monotonic()
        self._in = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, client, queue_size_limit=16384)
        self._in.ignore_types(sysex=True, timing=True, active_sense=True)
        self._in.open_virtual_port("recv")
        self._stop = threading.Event()
        self._drain = threading.Thread(target=self._run, daemon=True)
        self._drain.start()

    def _pull(self) -> bool:
        item = self._in.get_message()
        if item is None:
            return False
        data, delta = item
        with self._lock:
            self._clock += delta if self.messages else 0.0
            self.messages.append((self._clock, tuple(data)))
            self._last_pull = time.monotonic()
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            while self._pull():
                pass
            time.sleep(0.002)

    def received(self) -> list[tuple[float, tuple[int, ...]]]:
        time.sleep(0.01)  # let the drain thread catch up with the queue
        with self._lock:
            return list(self.messages)

    def received_settled(self, quiet: float = 0.25, timeout: float = 10.0) -> list[tuple[float, tuple[int, ...]]]:
        """Everything received once nothing new has arrived for ``quiet`` s (or after ``timeout`` s):
        for reading what a sender that has just stopped sent last. On a loaded machine its final
        messages (a panic's note-offs) can still be on their way through JACK and the drain thread
        when the sending process has already exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                idle = time.monotonic() - self._last_pull
            if idle >= quiet:
                break
            time.sleep(0.02)
        return self.received()

    def received_when(self, done, timeout: float = 10.0) -> list[tuple[int, ...]]:
        """The messages (data only) once ``done(messages)`` holds, or all that came within ``timeout`` s:
        on a loaded machine a message can take longer through JACK than any fixed pause."""
        deadline = time.monotonic() + timeout
        while not done(got := [d for _, d in self.received()]) and time.monotonic() < deadline:
            time.sleep(0.05)
        return got

    def close(self) -> None:
        if self._in is not None:
            self._stop.set()
            self._drain.join()
            while self._pull():
                pass
            self._in.close_port()
            self._in.delete()
            self._in = None


def sounding_after(messages: list[tuple[int, ...]]) -> dict[tuple[int, int], int]:
    """Notes still on at the end of a message stream: (channel, pitch) -> unreleased strikes."""
    on: dict[tuple[int, int], int] = {}
    for data in messages:
        status, ch = data[0] & 0xF0, data[0] & 0x0F
        if status == 0x90 and data[2] > 0:
            on[(ch, data[1])] = on.get((ch, data[1]), 0) + 1
        elif status == 0x80 or (status == 0x90 and data[2] == 0):
            if on.get((ch, data[1])):
                on[(ch, data[1])] -= 1
        elif status == 0xB0 and data[1] in (120, 123):
            for key in [k for k in on if k[0] == ch]:
                on[key] = 0
    return {k: v for k, v in on.items() if v}


def stuck_notes(receiver: "MidiReceiver", messages: list[tuple[int, ...]]) -> dict[tuple[int, int], int]:
    """Notes the receiver heard struck and not released by a real note-off (All Notes Off does not
    count: some synths ignore it). Except where JACK itself lost messages: if the server reported an
    XRun since the receiver opened, a note-off may have been dropped by JACK after we sent it, and
    then the notes must at least be covered by the All Notes Off (CC123/CC120) every stop sends."""
    strict = sounding_after([d for d in messages if not (d[0] & 0xF0 == 0xB0 and d[1] in (120, 123))])
    if strict and receiver.server is not None and receiver.server.xruns_since(receiver.opened_at):
        return sounding_after(messages)
    return strict


@pytest.fixture(scope="module")
def jack_server():
    with JackServer() as server:
        yield server


@pytest.fixture
def receiver(jack_server):
    rec = MidiReceiver()
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A 2-layer random RWKV-7 with the REMI tokenizer in its sidecar (what `generate` loads)."""
    import torch

    from engine.data.tokenizer import PianoTokenizer
    from engine.model import RWKV7, ModelConfig, save_checkpoint

    tok = PianoTokenizer("REMI")
    torch.manual_seed(0)
    model = RWKV7(ModelConfig(n_layer=2, n_embd=64, head_size=32, vocab_size=tok.vocab_size))
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.pth", tokenizer=tok.to_config())

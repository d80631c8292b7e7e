"""MIDI output ports through python-rtmidi: pick an API, list ports, open one by name or create a virtual one.

``auto`` tries ALSA, then JACK on Linux (CoreMIDI on macOS, Windows MM on Windows). Probing JACK
never starts a JACK server as a side effect (JACK_NO_START_SERVER).
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass

VIRTUAL_PORT_NAME = "PianoMuse"
CLIENT_NAME = "PianoMuse"
API_CHOICES = ("auto", "alsa", "jack", "coremidi", "winmm")


class PortError(RuntimeError):
    """A MIDI port problem a user can fix; the message is one sentence saying how."""


class NoMidiSystem(PortError):
    """Neither ALSA nor JACK answers here. The sentence says how to get one; each face adds what it
    can do without one (a file, the built-in piano), in its own words."""


def _rtmidi():
    import rtmidi  # imported on use: engine imports stay light

    return rtmidi


def _api_ids() -> dict[str, int]:
    rt = _rtmidi()
    return {
        "alsa": rt.API_LINUX_ALSA,
        "jack": rt.API_UNIX_JACK,
        "coremidi": rt.API_MACOSX_CORE,
        "winmm": rt.API_WINDOWS_MM,
    }


def _auto_order() -> tuple[str, ...]:
    if sys.platform.startswith("linux"):
        return ("alsa", "jack")
    if sys.platform == "darwin":
        return ("coremidi", "jack")
    if sys.platform == "win32":
        return ("winmm",)
    return ("jack",)


@contextlib.contextmanager
def _quiet_native_stderr():
    """ALSA and JACK print their own errors to fd 2 while we probe; the user gets our sentence instead."""
    try:
        saved = os.dup(2)
    except OSError:  # pragma: no cover - no fd 2 at all
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _new_client(kind: str, api: str, client_name: str = CLIENT_NAME):
    """An rtmidi MidiOut/MidiIn on ``api``, or None when that API has no server/sequencer here."""
    rt = _rtmidi()
    if api not in _api_ids():
        raise PortError(f"Unknown MIDI API {api!r}; use one of: {', '.join(API_CHOICES)}.")
    if _api_ids()[api] not in rt.get_compiled_api():
        return None
    os.environ.setdefault("JACK_NO_START_SERVER", "1")
    cls = rt.MidiOut if kind == "out" else rt.MidiIn
    try:
        with _quiet_native_stderr():
            return cls(_api_ids()[api], client_name)
    except (rt.SystemError, rt.RtMidiError, RuntimeError):
        return None


def available_apis(api: str = "auto") -> list[str]:
    """The APIs (in try order) that can be used right now."""
    wanted = _auto_order() if api == "auto" else (api,)
    usable = []
    for name in wanted:
        client = _new_client("out", name)
        if client is not None:
            usable.append(name)
            client.delete()
    return usable


def resolve_api(api: str = "auto") -> str:
    """The API to use; raises PortError with what to do when none works."""
    if api not in API_CHOICES:
        raise PortError(f"Unknown MIDI API {api!r}; use one of: {', '.join(API_CHOICES)}.")
    usable = available_apis(api)
    if usable:
        return usable[0]
    if api == "auto":
        raise NoMidiSystem(
            "No MIDI system is available (tried " + ", ".join(_auto_order()) + "): load the ALSA sequencer "
            "(`modprobe snd-seq`) or start JACK on your sound card (`jackd -d alsa`; `jackd -d dummy` runs "
            "without one and makes no sound)"
        )
    if api == "jack":
        raise NoMidiSystem("The JACK server is not running: start it on your sound card (`jackd -d alsa`; "
                           "`jackd -d dummy` makes no sound) or pick --midi-api alsa")
    if api == "alsa":
        raise PortError("The ALSA sequencer is not available (/dev/snd/seq missing): load it with `modprobe snd-seq` or pick --midi-api jack.")
    raise PortError(f"The {api} MIDI API is not available on this machine; try --midi-api auto.")


def list_ports(api: str = "auto", kind: str = "out") -> dict[str, list[str]]:
    """Output port names (MIDI destinations; ``kind="in"``: sources) per usable API, e.g. {"jack": ["fluidsynth:midi_00"]}."""
    names = _auto_order() if api == "auto" else (api,)
    result: dict[str, list[str]] = {}
    for name in names:
        client = _new_client(kind, name, CLIENT_NAME + "-probe")
        if client is None:
            continue
        try:
            result[name] = list(client.get_ports())
        finally:
            client.delete()
    return result


def match_port(wanted: str, names: list[str], kind: str = "output") -> str:
    """Exact name first, then a unique case-insensitive substring; else one sentence listing the choices."""
    if wanted in names:
        return wanted
    hits = [n for n in names if wanted.lower() in n.lower()]
    if len(hits) == 1:
        return hits[0]
    listing = ", ".join(repr(n) for n in names) or "none"
    if not hits:
        raise PortError(f"No MIDI {kind} port matches {wanted!r}; available ports: {listing} (see `pianomuse-tui --headless ports`).")
    raise PortError(f"{wanted!r} matches several ports ({', '.join(repr(n) for n in hits)}); give more of the name.")


JACK_FLUSH_S = 0.05  # seconds a JACK output stays open after its last message (see MidiOutput._let_last_messages_leave)


@dataclass
class MidiOutput:
    """An open output: ``send(bytes)``, ``is_alive()`` (the destination still exists), ``reopen()``, ``close()``."""

    api: str
    target: str | None  # destination port name, None for our own virtual port
    virtual: bool
    client_name: str = CLIENT_NAME

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._last_send = 0.0
        self._out = None
        self._probe = None
        self._open()

    @property
    def name(self) -> str:
        return f"{self.client_name}:{VIRTUAL_PORT_NAME} (virtual, {self.api})" if self.virtual else f"{self.target} ({self.api})"

    def _open(self) -> None:
        out = _new_client("out", self.api, self.client_name)
        if out is None:
            raise PortError(resolve_error_sentence(self.api))
        rt = _rtmidi()
        try:
            if self.virtual:
                out.open_virtual_port(VIRTUAL_PORT_NAME)
            else:
                names = list(out.get_ports())
                chosen = match_port(self.target, names)
                out.open_port(names.index(chosen), VIRTUAL_PORT_NAME)
                self.target = chosen
        except PortError:  # already one sentence (no port of that name): first, as it is a RuntimeError too
            out.delete()
            raise
        except (rt.RtMidiError, RuntimeError) as err:
            out.delete()
            raise PortError(f"Could not open the MIDI port {self.target or VIRTUAL_PORT_NAME!r} ({err}); check it with `pianomuse-tui --headless ports`.") from err
        with self._lock:
            self._out = out
        if not self.virtual and self._probe is None:
            # Made now, not at the first check: opening a JACK client holds the GIL for ~20 ms mid-performance.
            self._probe = _new_client("out", self.api, self.client_name + "-watch")

    def send(self, data) -> None:
        out = self._out
        if out is None:
            raise PortError("The MIDI port is closed; reconnect it.")
        out.send_message(list(data))
        self._last_send = time.monotonic()

    def is_alive(self) -> bool:
        """False when the destination port (e.g. the synth) is gone; a virtual port lives as long as we do."""
        if self._out is None:
            return False
        if self.virtual:
            return True
        if self._probe is None:
            self._probe = _new_client("out", self.api, self.client_name + "-watch")
            if self._probe is None:
                return False
        try:
            return self.target in self._probe.get_ports()
        except Exception:  # noqa: BLE001 - a dead server looks like a dead port
            return False

    def reopen(self) -> None:
        """Close and open again by the same name (after a synth restarted)."""
        self._close_out()
        self._open()

    def _close_out(self) -> None:
        with self._lock:
            out, self._out = self._out, None
        if out is not None:
            self._let_last_messages_leave()
            try:
                out.close_port()
            finally:
                out.delete()

    def _let_last_messages_leave(self) -> None:
        """On JACK, RtMidi hands messages to the server's process cycle through a ring buffer, and
        closing the port can race a cycle that has already emptied it: a message sent within about
        a cycle of the close (the last note-off of a panic) is then lost and the note rings on.
        Wait until the last send is ``JACK_FLUSH_S`` old (a few periods of any usual buffer size)."""
        if self.api != "jack":
            return  # ALSA, CoreMIDI and WinMM deliver each message as it is sent
        wait = self._last_send + JACK_FLUSH_S - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def close(self) -> None:
        self._close_out()
        if self._probe is not None:
            self._probe.delete()
            self._probe = None


def resolve_error_sentence(api: str) -> str:
    try:
        resolve_api(api)
    except PortError as err:
        return str(err)
    return f"Could not create a MIDI client on {api}; check `pianomuse-tui --headless ports`."


def open_output(api: str = "auto", name: str | None = None, virtual: bool = False, client_name: str = CLIENT_NAME) -> MidiOutput:
    """Open an existing port by name/substring, or create the virtual port "PianoMuse"."""
    if virtual and name:
        raise PortError("Give either --port NAME or --virtual, not both.")
    if not virtual and not name:
        raise PortError("Say where to play: --port NAME (see `pianomuse-tui --headless ports`) or --virtual.")
    if virtual and sys.platform == "win32":
        existing = list_ports(api).get("winmm", [])
        raise PortError("Windows has no virtual MIDI ports; pick an existing one with --port: " + (", ".join(existing) or "none found (install loopMIDI)") + ".")
    chosen = resolve_api(api)
    if name and api == "auto":
        # The port may live on the second API (e.g. a synth on JACK while ALSA also runs).
        for candidate, names in list_ports("auto").items():
            try:
                match_port(name, names)
            except PortError:
                continue
            chosen = candidate
            break
    return MidiOutput(api=chosen, target=name, virtual=virtual, client_name=client_name)


VIRTUAL_INPUT_NAME = "PianoMuse in"


def list_input_ports(api: str = "auto") -> dict[str, list[str]]:
    """Input port names (MIDI sources: keyboards, other programs) per usable API, our own left out."""
    return {which: [p for p in names if VIRTUAL_INPUT_NAME not in p] for which, names in list_ports(api, "in").items()}


class MidiInput:
    """An open input: every channel message arrives in ``messages`` as (time.monotonic() at arrival, bytes).

    ``virtual``: a new input port "PianoMuse in" that keyboards and programs connect to (not on Windows).
    """

    def __init__(self, api: str, source: str | None, virtual: bool, client_name: str = CLIENT_NAME + "-in") -> None:
        import queue

        self.api, self.source, self.virtual = api, source, virtual
        self.messages: "queue.Queue[tuple[float, tuple[int, ...]]]" = queue.Queue()
        client = _new_client("in", api, client_name)
        if client is None:
            raise PortError(resolve_error_sentence(api))
        rt = _rtmidi()
        try:
            if virtual:
                client.open_virtual_port(VIRTUAL_INPUT_NAME)
            else:
                names = [p for p in client.get_ports()]
                chosen = match_port(source, names, "input")
                client.open_port(names.index(chosen), VIRTUAL_INPUT_NAME)
                self.source = chosen
        except PortError:  # already one sentence (no input of that name): first, as it is a RuntimeError too
            client.delete()
            raise
        except (rt.RtMidiError, RuntimeError) as err:
            client.delete()
            raise PortError(f"Could not open the MIDI input {source or VIRTUAL_INPUT_NAME!r} ({err}); check it with `pianomuse-tui --headless ports`.") from err
        client.ignore_types(sysex=True, timing=True, active_sense=True)
        self._client = client
        self._stop = threading.Event()
        # Polled, not a Python callback: a callback runs in JACK's process thread and must take the
        # GIL there; a busy interpreter then stalls the JACK graph until the server drops the client.
        self._drain = threading.Thread(target=self._run, args=(time.monotonic,), name="pianomuse-midi-in", daemon=True)
        self._drain.start()

    def _run(self, clock) -> None:
        """Move messages into ``messages`` with their arrival times: a burst keeps the driver's own
        spacing (rtmidi's deltas), anchored at the moment its last message is read."""
        client = self._client
        while not self._stop.is_set():
            burst = []
            while True:
                item = client.get_message()
                if item is None:
                    break
                burst.append(item)
            if not burst:
                time.sleep(0.001)
                continue
            at = clock()
            stamps = [at]
            for _, delta in reversed(burst[1:]):
                stamps.append(stamps[-1] - delta)
            for (data, _), stamp in zip(burst, reversed(stamps)):
                self.messages.put((stamp, tuple(data)))

    @property
    def name(self) -> str:
        return f"{CLIENT_NAME}:{VIRTUAL_INPUT_NAME} (virtual, {self.api})" if self.virtual else f"{self.source} ({self.api})"

    def close(self) -> None:
        self._stop.set()
        if self._drain.is_alive() and self._drain is not threading.current_thread():
            self._drain.join(timeout=2.0)
        client, self._client = self._client, None
        if client is not None:
            client.close_port()
            client.delete()


def open_input(api: str = "auto", name: str | None = None, virtual: bool = False) -> MidiInput:
    """Listen to an existing source by name/substring, or create the virtual input "PianoMuse in"."""
    if virtual and sys.platform == "win32":
        existing = list_input_ports(api).get("winmm", [])
        raise PortError("Windows has no virtual MIDI ports; pick your keyboard with --in: " + (", ".join(existing) or "none found") + ".")
    chosen = resolve_api(api)
    if name and api == "auto":
        for candidate, names in list_input_ports("auto").items():
            try:
                match_port(name, names, "input")
            except PortError:
                continue
            chosen = candidate
            break
    return MidiInput(api=chosen, source=name, virtual=virtual or not name)

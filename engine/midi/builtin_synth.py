"""The built-in piano: FluidSynth's library in this process (pyfluidsynth), so PianoMuse sounds with no
MIDI system and no external synth, and the same synth renders a take to WAV offline.

Why this synth (bench/synth_choice.py measured it): pyfluidsynth is a 24 KB pure-Python wheel over
libfluidsynth (0.5 MB, the library the `fluidsynth` package already installs), renders a second of
piano in ~15 ms on one core and plays through FluidSynth's own audio drivers (PipeWire, PulseAudio,
ALSA, JACK, CoreAudio, DirectSound). tinysoundfont's wheel is self-contained for rendering but needs
PyAudio (a PortAudio build on Linux) to make sound.

Three ways to use it:
- ``BuiltinSynth()`` is a MIDI output (``send``, ``is_alive``, ``reopen``, ``close``) the live player
  plays to; sound goes to the sound card through FluidSynth's audio driver;
- ``BuiltinSynth(driver="capture")`` renders in real time into memory, block by block, paced by the
  clock: what a sound card would get, for tests and benchmarks on machines without one;
- ``render_wav(events, path)`` renders timed events offline, sample-exact.

SoundFonts are looked for in ``--soundfont``/the config, ``$PIANOMUSE_SOUNDFONT``, then the places
Debian, Fedora, Arch and Homebrew install them; ``SOUNDFONT_HINT`` says how to get one.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from engine.atomic import write_with

from .events import CONTROL_CHANGE, NOTE_OFF, NOTE_ON, PROGRAM_CHANGE, MidiEvent
from .ports import PortError

BUILTIN_NAME = "built-in piano"
SAMPLE_RATE = 44100
SOUNDFONT_HINT = ("No SoundFont found for the built-in piano: install one with `sudo apt install fluid-soundfont-gm` "
                  "(Debian/Ubuntu; `brew install fluid-synth` and an .sf2 on macOS) or pass --soundfont FILE.sf2.")
LIBRARY_HINT = ("The built-in piano needs FluidSynth's library: install it with `sudo apt install libfluidsynth3` "
                "(Debian/Ubuntu) or `brew install fluid-synth` (macOS), or play to a MIDI port instead.")
SOUNDFONT_PLACES = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",  # Debian/Ubuntu fluid-soundfont-gm
    "/usr/share/soundfonts/FluidR3_GM.sf2",  # Fedora, Arch
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/opt/homebrew/share/soundfonts/default.sf2",  # Homebrew (Apple silicon)
    "/usr/local/share/soundfonts/default.sf2",  # Homebrew (Intel)
)
SOUNDFONT_FOLDERS = ("/usr/share/sounds/sf2", "/usr/share/soundfonts", "/opt/homebrew/share/soundfonts",
                     "/usr/local/share/soundfonts", "~/.local/share/soundfonts")


def find_soundfont(given: str | Path | None = None) -> Path | None:
    """The SoundFont the built-in piano uses: ``given``, else $PIANOMUSE_SOUNDFONT, else a GM font
    installed in a usual place (FluidR3_GM first), else any .sf2 there; None when there is none."""
    for candidate in (given, os.environ.get("PIANOMUSE_SOUNDFONT")):
        if candidate:
            return Path(candidate).expanduser() if Path(candidate).expanduser().is_file() else None
    for place in SOUNDFONT_PLACES:
        if Path(place).is_file():
            return Path(place)
    for folder in SOUNDFONT_FOLDERS:
        found = sorted(Path(folder).expanduser().glob("*.sf[23]")) if Path(folder).expanduser().is_dir() else []
        if found:
            return found[0]
    return None


def _fluidsynth():
    """The pyfluidsynth module; PortError with the install sentence when it or its library is missing."""
    try:
        import fluidsynth
    except (ImportError, OSError):
        raise PortError(LIBRARY_HINT) from None
    return fluidsynth


def builtin_problem(soundfont: str | Path | None = None) -> str | None:
    """Why the built-in piano cannot play here (one sentence), or None when it can."""
    if soundfont is not None and not Path(soundfont).expanduser().is_file():
        return f"The soundfont {soundfont} does not exist; pass another .sf2 file or leave --soundfont out."
    if find_soundfont(soundfont) is None:
        return SOUNDFONT_HINT
    try:
        _fluidsynth()
    except PortError as err:
        return str(err)
    return None


@dataclass
class OutputOption:
    """One place a take can sound, as the Generate pane and `ports` list them."""

    kind: str  # "builtin" | "virtual" | "fluidsynth" | "port"
    label: str
    api: str | None = None
    port: str | None = None
    available: bool = True
    hint: str | None = None  # why it is not available, and what to do


def available_outputs(api: str = "auto") -> list[OutputOption]:
    """Every output a take can go to here: the built-in piano first (with a hint when it cannot play),
    our virtual port and FluidSynth when a MIDI system runs, then the existing MIDI ports."""
    from .ports import list_ports, resolve_api

    problem = builtin_problem()
    options = [OutputOption("builtin", BUILTIN_NAME, available=problem is None, hint=problem)]
    try:
        resolve_api(api)
    except PortError as err:
        options.append(OutputOption("virtual", "virtual port 'PianoMuse'", available=False, hint=str(err)))
        return options
    options.append(OutputOption("virtual", "virtual port 'PianoMuse'", api=api))
    options.append(OutputOption("fluidsynth", "start FluidSynth", api=api))
    for which, names in list_ports(api).items():
        for name in names:
            if "PianoMuse" in name and "FluidSynth" not in name:
                continue  # our own ports
            options.append(OutputOption("port", f"{name} ({which})", api=which, port=name))
    return options


def _audio_drivers() -> tuple[str, ...]:
    if sys.platform.startswith("linux"):
        return ("pipewire", "pulseaudio", "alsa", "jack")
    if sys.platform == "darwin":
        return ("coreaudio",)
    if sys.platform == "win32":
        return ("wasapi", "dsound")
    return ("sndio", "oss")


class BuiltinSynth:
    """A FluidSynth synth in this process that is also a MIDI output (the ``OutputPort`` protocol)."""

    def __init__(self, soundfont: str | Path | None = None, driver: str = "auto", sample_rate: int = SAMPLE_RATE,
                 gain: float = 0.5, block: int = 256) -> None:
        fs = _fluidsynth()
        path = find_soundfont(soundfont)
        if path is None:
            raise PortError(SOUNDFONT_HINT if soundfont is None else
                            f"The soundfont {soundfont} does not exist; pass another .sf2 file or leave --soundfont out.")
        self.soundfont = path
        self.sample_rate = int(sample_rate)
        self.block = int(block)
        self._lock = threading.Lock()
        self._synth = fs.Synth(gain=gain, samplerate=float(sample_rate))
        if self._synth.sfload(str(path), 1) < 0:
            self._synth.delete()
            raise PortError(f"FluidSynth could not read the soundfont {path}; pass another .sf2 file with --soundfont.")
        self._driver = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self.blocks: list[tuple[float, object]] = []  # capture mode: (wall time the block starts, int16 stereo)
        self.driver = driver
        if driver == "capture":
            self._thread = threading.Thread(target=self._capture, name="pianomuse-builtin-capture", daemon=True)
            self._thread.start()
        else:
            self._start_driver(fs, driver)

    def _start_driver(self, fs, driver: str) -> None:
        os.environ.setdefault("JACK_NO_START_SERVER", "1")
        tried = _audio_drivers() if driver == "auto" else (driver,)
        for name in tried:
            self._synth.setting("audio.driver", name)
            self._synth.setting("audio.period-size", self.block)
            self._synth.setting("audio.jack.autoconnect", 1)
            from .ports import _quiet_native_stderr  # drivers print their own probing errors

            with _quiet_native_stderr():
                handle = fs.new_fluid_audio_driver(self._synth.settings, self._synth.synth)
            if handle:
                self._driver, self.driver = handle, name
                return
        self._synth.delete()
        raise PortError(f"No sound output found for the built-in piano (tried {', '.join(tried)}): check your sound "
                        "settings.")

    # ---- the OutputPort protocol ------------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"{BUILTIN_NAME} ({self.soundfont.name}, {self.driver})"

    def send(self, data) -> None:
        if self._closed.is_set():
            raise PortError("The built-in piano is closed.")
        with self._lock:
            _apply(self._synth, tuple(data))

    def is_alive(self) -> bool:
        return not self._closed.is_set()

    def reopen(self) -> None:
        if self._closed.is_set():
            raise PortError("The built-in piano is closed; start the take again.")

    def close(self) -> None:
        """Stop the audio (driver or capture thread) and free the synth. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        fs = _fluidsynth()
        if self._driver:
            fs.delete_fluid_audio_driver(self._driver)
            self._driver = None
        with self._lock:
            self._synth.audio_driver = self._synth.midi_driver = None
            self._synth.delete()

    stop = close  # the live player stops a synth it started

    # ---- capture mode -----------------------------------------------------------------------------

    def _capture(self) -> None:
        """Render one block per block-duration of wall time, as a sound card would pull them."""
        period = self.block / self.sample_rate
        start = time.monotonic()
        k = 0
        while not self._closed.is_set():
            due = start + k * period
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with self._lock:
                samples = self._synth.get_samples(self.block)
            self.blocks.append((due, samples))
            k += 1

    def captured(self):
        """(wall time of the first sample, mono float32 audio) of everything rendered so far (capture mode)."""
        import numpy as np

        blocks = list(self.blocks)
        if not blocks:
            return 0.0, np.zeros(0, dtype=np.float32)
        audio = np.concatenate([b for _, b in blocks]).astype(np.float32).reshape(-1, 2).mean(axis=1) / 32768.0
        return blocks[0][0], audio


def _apply(synth, data: tuple[int, ...]) -> None:
    """One MIDI channel message to a pyfluidsynth Synth."""
    status, channel = data[0] & 0xF0, data[0] & 0x0F
    if status == NOTE_ON and data[2] > 0:
        synth.noteon(channel, data[1], data[2])
    elif status == NOTE_OFF or status == NOTE_ON:
        synth.noteoff(channel, data[1])
    elif status == CONTROL_CHANGE:
        synth.cc(channel, data[1], data[2])
    elif status == PROGRAM_CHANGE:
        synth.program_change(channel, data[1])


def render(events: Iterable[MidiEvent], soundfont: str | Path | None = None, sample_rate: int = SAMPLE_RATE,
           tail: float = 1.5, gain: float = 0.5):
    """Timed events rendered offline, each at its exact sample: int16 stereo interleaved (numpy)."""
    import numpy as np

    fs = _fluidsynth()
    path = find_soundfont(soundfont)
    if path is None:
        raise PortError(SOUNDFONT_HINT)
    synth = fs.Synth(gain=gain, samplerate=float(sample_rate))
    try:
        synth.sfload(str(path), 1)
        pieces, done = [], 0
        ordered = sorted(events, key=lambda e: (e.time, e.order))
        for event in ordered:
            at = max(done, round(event.time * sample_rate))
            if at > done:
                pieces.append(synth.get_samples(at - done))
                done = at
            _apply(synth, event.data)
        end = done + round(tail * sample_rate)
        while done < end:
            n = min(sample_rate, end - done)
            pieces.append(synth.get_samples(n))
            done += n
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)
    finally:
        synth.delete()


def render_wav(events: Iterable[MidiEvent], path: str | Path, soundfont: str | Path | None = None,
               sample_rate: int = SAMPLE_RATE) -> Path:
    """Write timed events as a 16-bit stereo WAV rendered by the built-in piano (written atomically)."""
    samples = render(events, soundfont, sample_rate)
    def write(tmp: Path) -> None:
        with wave.open(str(tmp), "wb") as out:
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(sample_rate)
            out.writeframes(samples.astype("<i2").tobytes())

    return write_with(Path(path), write)


def onsets(audio, sample_rate: int = SAMPLE_RATE, window: float = 0.002, rise: float = 8.0, floor: float = 1e-3,
           gap: float = 0.03) -> list[float]:
    """Seconds where the sound starts (energy in a 2 ms window jumps ``rise`` times above the window
    before it); used to check rendered timing against the scheduled onsets."""
    import numpy as np

    n = max(1, int(window * sample_rate))
    frames = len(audio) // n
    if frames < 2:
        return []
    energy = (np.asarray(audio[: frames * n], dtype=np.float64).reshape(frames, n) ** 2).mean(axis=1)
    found, last = [], -1e9
    for i in range(1, frames):
        before = energy[max(0, i - 3):i].max()
        if energy[i] > floor ** 2 and energy[i] > rise * max(before, 1e-12):
            t = i * n / sample_rate
            if t - last >= gap:
                # refine to the first sample above a tenth of this window's peak
                seg = np.abs(np.asarray(audio[(i - 1) * n:(i + 1) * n]))
                first = int(np.argmax(seg > 0.1 * seg.max()))
                found.append(((i - 1) * n + first) / sample_rate)
                last = t
    return found

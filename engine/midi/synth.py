"""Start FluidSynth with the General MIDI soundfont for users without a synth, and shut it down on exit."""
from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .builtin_synth import find_soundfont
from .ports import PortError, list_ports, resolve_api

DEFAULT_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
SYNTH_CLIENT = "PianoMuse-FluidSynth"


class FluidSynth:
    """A running FluidSynth process and the name of its MIDI input port."""

    def __init__(self, process: subprocess.Popen, port_name: str, api: str, log_path: Path, audio_file: Path | None) -> None:
        self.process = process
        self.port_name = port_name
        self.api = api
        self.log_path = log_path
        self.audio_file = audio_file
        atexit.register(self.stop)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 3.0) -> None:
        """Ask it to quit (so a rendered file is finalised), then terminate, then kill."""
        if self.process.poll() is None:
            try:
                self.process.stdin.write(b"quit\n")
                self.process.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        atexit.unregister(self.stop)

    def __enter__(self) -> "FluidSynth":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_fluidsynth(
    api: str = "auto",
    soundfont: str | Path | None = None,
    audio_file: str | Path | None = None,
    client_name: str = SYNTH_CLIENT,
    gain: float = 0.5,
    timeout: float = 10.0,
) -> FluidSynth:
    """Launch FluidSynth reading MIDI from ``api``; sound goes to the audio system, or to ``audio_file`` (WAV).

    Returns once its MIDI input port exists, so ``open_output(api, synth.port_name)`` works at once.
    """
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise PortError("FluidSynth is not installed: install it with `sudo apt install fluidsynth fluid-soundfont-gm`, or play to your own synth with --port.")
    soundfont = find_soundfont(soundfont) or Path(soundfont or DEFAULT_SOUNDFONT)
    if not soundfont.is_file():
        raise PortError(f"The soundfont {soundfont} is missing: install it with `sudo apt install fluid-soundfont-gm` or pass another .sf2 file.")
    api = resolve_api(api)
    if api not in ("jack", "alsa"):
        raise PortError(f"Starting FluidSynth is supported with JACK or ALSA, not {api}; start your synth yourself and use --port.")
    args = [exe, "-g", str(gain)]
    if api == "jack":
        args += ["-m", "jack", "-o", f"midi.jack.id={client_name}"]
    else:
        args += ["-m", "alsa_seq", "-o", f"midi.alsa_seq.id={client_name}"]
    if audio_file is not None:
        audio_file = Path(audio_file)
        audio_file.parent.mkdir(parents=True, exist_ok=True)
        args += ["-a", "file", "-o", f"audio.file.name={audio_file}"]
    elif api == "jack":
        args += ["-a", "jack", "-o", "audio.jack.autoconnect=1"]  # straight to the sound card
    args.append(str(soundfont))

    log = tempfile.NamedTemporaryFile(prefix="pianomuse-fluidsynth-", suffix=".log", delete=False)
    # stdin stays open: FluidSynth's shell keeps the process alive until we send "quit".
    process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
    synth = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        port = next((p for p in list_ports(api).get(api, []) if client_name in p), None)
        if port is not None:
            synth = FluidSynth(process, port, api, Path(log.name), audio_file)
            break
        time.sleep(0.1)
    log.close()
    if synth is None:
        if process.poll() is None:
            process.kill()
            process.wait()
        tail = Path(log.name).read_text(errors="replace").strip().splitlines()[-3:]
        raise PortError(f"FluidSynth did not open its MIDI input on {api} ({' / '.join(tail) or 'no output'}); see {log.name}.")
    return synth

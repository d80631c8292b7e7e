"""FluidSynth with the GM soundfont hears our stream over JACK, and renders the written file, as real audio."""
from __future__ import annotations

import subprocess
import threading
import time
import wave

import numpy as np
import pytest

from engine.midi import DEFAULT_SOUNDFONT, LookaheadScheduler, control_change, note_off, note_on, open_output, start_fluidsynth, write_midi_file
from jack_server import jack_server, tiny_checkpoint  # noqa: F401  (fixtures)

pytestmark = pytest.mark.jack


def read_wav(path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as wav:
        frames = wav.readframes(wav.getnframes())
        rate = wav.getframerate()
        width = wav.getsampwidth()
    dtype = {2: np.int16, 4: np.int32}[width]
    return np.frombuffer(frames, dtype=dtype).astype(np.float64) / np.iinfo(dtype).max, rate


def phrase() -> list:
    events = [control_change(0.0, 64, 127)]
    for i, pitch in enumerate([60, 64, 67, 72, 67, 64, 60, 55]):
        events += [note_on(i * 0.12, pitch, 100), note_off(i * 0.12 + 0.1, pitch)]
    events.append(control_change(1.0, 64, 0))
    return events


def test_fluidsynth_plays_our_jack_stream_into_non_silent_audio(jack_server, tmp_path):
    wav_path = tmp_path / "heard.wav"
    synth = start_fluidsynth("jack", audio_file=wav_path, client_name=f"pm-fs-{jack_server.name[-6:]}")
    try:
        assert synth.port_name.endswith(":midi_00")
        silence_before = 0.3
        time.sleep(silence_before)
        out = open_output("jack", synth.port_name)
        sched = LookaheadScheduler(out, lookahead=0.5)
        sched.submit(phrase())
        sched.start()
        sched.finish()
        assert sched.wait_done(10)
        time.sleep(0.3)
        sched.stop()
        out.close()
    finally:
        synth.stop()
    assert not synth.running
    audio, rate = read_wav(wav_path)
    assert audio.size > rate  # stereo frames for over half a second were rendered
    rms = float(np.sqrt(np.mean(audio**2)))
    assert rms > 1e-3, f"FluidSynth rendered silence (rms {rms})"


def test_fluidsynth_renders_the_written_file(tmp_path):
    mid = write_midi_file(phrase(), tmp_path / "phrase.mid")
    wav_path = tmp_path / "file.wav"
    subprocess.run(["fluidsynth", "-ni", "-g", "0.5", "-F", str(wav_path), "-r", "22050", str(DEFAULT_SOUNDFONT), str(mid)], check=True, capture_output=True, timeout=60)
    audio, rate = read_wav(wav_path)
    loud = np.abs(audio).reshape(-1, 2).max(axis=1)
    assert float(np.sqrt(np.mean(audio**2))) > 1e-3
    # Sound starts at the first note and dies away after the last release (nothing stuck).
    assert loud[: int(0.05 * rate)].max() > 1e-3 and loud[-int(0.1 * rate):].max() < loud.max() * 0.05


def test_generate_with_synth_fluidsynth_starts_it_plays_and_shuts_it_down(jack_server, tiny_checkpoint, tmp_path):
    import os
    import signal
    import sys

    cmd = [sys.executable, "-m", "pianomuse_tui.cli", "--headless", "generate", "--checkpoint", str(tiny_checkpoint), "--bars", "64",
           "--max-tokens", "3000", "--seed", "1", "--midi-api", "jack", "--synth", "fluidsynth", "--out", str(tmp_path / "take.mid")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.decode() for line in proc.stdout), daemon=True)
    reader.start()

    def synth_ports():
        listing = subprocess.run(["jack_lsp", "-s", jack_server.name], capture_output=True, text=True).stdout
        return [line for line in listing.splitlines() if "PianoMuse-FluidSynth" in line]

    try:
        deadline = time.monotonic() + 60
        while not synth_ports() and time.monotonic() < deadline:
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.1)
        assert synth_ports(), "FluidSynth never showed up on the JACK server"
        # its audio is connected to the (dummy) sound card, so a user would hear it
        listing = subprocess.run(["jack_lsp", "-s", jack_server.name, "-c"], capture_output=True, text=True).stdout
        links, port = {}, None
        for line in listing.splitlines():
            if line.startswith(" "):
                links.setdefault(port, []).append(line.strip())
            else:
                port = line.strip()
        assert "system:playback_1" in links.get("PianoMuse-FluidSynth:left", [])
        # the synth starts before the model loads; interrupt once the music is playing
        while not any("playing alternative 1" in line for line in lines) and time.monotonic() < deadline:
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(timeout=10)
        output = "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "playing alternative 1 on PianoMuse-FluidSynth" in " ".join(output.split())
    assert (tmp_path / "take.mid").is_file()
    deadline = time.monotonic() + 5
    while synth_ports() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert synth_ports() == []  # FluidSynth was shut down with the command

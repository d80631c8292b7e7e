"""A take has one owner, ``engine.generate.performance``: the Generate pane's ``Performance`` and the
`generate` command run the same take lifecycle, so what it does reaches both faces. Here: a duet
with no output chosen plays on the built-in piano, or, where that cannot sound, on the virtual port
'PianoMuse' (said once); and a stop (the pane's, or a signal to the command, playing or writing
files) still writes the take. The command used to open its outputs itself, so the pane's
Performance could do neither."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import mido
import pytest
from jack_server import jack_server, tiny_checkpoint  # noqa: F401  (fixtures)

from engine.generate.defaults import DuetConfig

NO_SOUND = "pianomuse-no-such-driver"  # an audio driver FluidSynth does not have: the built-in piano cannot sound here


def _virtual_output_open() -> bool:
    """The port 'PianoMuse' is on the JACK graph (as a source other clients read from)."""
    ports = subprocess.run(["jack_lsp"], capture_output=True, text=True, timeout=10).stdout.split("\n")
    return any(name.strip().endswith(":PianoMuse") for name in ports)


def _tracks(path) -> list[str]:
    return [track.name for track in mido.MidiFile(path).tracks if track.name]


@pytest.mark.jack
def test_both_faces_play_a_duet_on_the_virtual_port_when_the_piano_cannot_sound_and_write_it_when_stopped(
        jack_server, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from engine.generate.performance import Knobs, OutputChoice, Performance, PerformanceSettings
    from pianomuse_tui.headless import generate_cmd

    choice = OutputChoice(api="jack", audio_driver=NO_SOUND, lookahead=0.3)  # no --port, --virtual or --synth

    # the app: the pane's one call, run in a worker thread and stopped from another
    told: list[str] = []
    app = Performance(PerformanceSettings(checkpoint=tiny_checkpoint, output=choice, midi_in="virtual"), Knobs(),
                      on_problem=told.append)
    ended: list[str] = []
    started: list[tuple[bool, str]] = []  # (the virtual port open, the output's name) when it started
    try:
        worker = threading.Thread(target=lambda: ended.append(app.perform(
            on_started=lambda name: started.append((_virtual_output_open(), name))).reason), daemon=True)
        worker.start()
        deadline = time.monotonic() + 60
        while app.duet is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # listening
        app.stop()
        worker.join(30)
    finally:
        app.close()
    assert ended == ["stopped"]
    assert len(started) == 1 and started[0][0] and "PianoMuse" in started[0][1], started
    assert len(told) == 1 and "No sound output found for the built-in piano" in told[0] \
        and told[0].endswith("Playing to the virtual port 'PianoMuse' instead."), told
    assert _tracks(app.save(tmp_path / "app.mid")[0]) == ["PianoMuse", "You"]
    assert not _virtual_output_open()  # closed with the take

    # the command: the same take in one call into the engine, stopped by SIGTERM once it plays
    ready = threading.Event()
    print_ready = generate_cmd._print_ready
    monkeypatch.setattr(generate_cmd, "_print_ready", lambda *args: (print_ready(*args), ready.set()))

    def terminate_once_playing() -> None:
        if ready.wait(60):
            time.sleep(0.5)
            if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:  # never the test run itself
                os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=terminate_once_playing, daemon=True)
    thread.start()
    code = generate_cmd.run_generate(tiny_checkpoint, None, None, None, None, 1, {"seed": 1}, tmp_path / "cmd.mid",
                                     False, choice, 1, midi_in="virtual", duet=DuetConfig())
    thread.join(10)
    out, err = capsys.readouterr()
    text = " ".join(err.split())
    assert code == 130, out + err
    assert text.count("Playing to the virtual port 'PianoMuse' instead.") == 1 and "No sound output found" in text, text
    assert "playing on PianoMuse:PianoMuse" in " ".join(out.split()), out
    assert _tracks(tmp_path / "cmd.mid") == ["PianoMuse", "You"]


def test_ctrl_c_while_the_command_writes_files_stops_generating_and_writes_every_alternative(tiny_checkpoint, tmp_path):
    """No port: the take is generated as fast as it can and written; Ctrl-C stops it there too."""
    out = tmp_path / "cut.mid"
    cmd = [sys.executable, "-m", "pianomuse_tui.cli", "--headless", "generate", "--checkpoint", str(tiny_checkpoint),
           "--bars", "100000", "--max-tokens", "16384", "--alternatives", "4", "--seed", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    try:
        first = proc.stdout.readline()  # "model ... (...), REMI tokens, no prompt": it is generating now
        assert first.startswith("model "), first + proc.stdout.read()
        time.sleep(2.0)  # a few hundred tokens on a busy machine; the budget (4 x 16384) takes over 10 s on a quiet one
        proc.send_signal(signal.SIGINT)
        output = " ".join((first + proc.communicate(timeout=60)[0]).split())
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    generated = int(output.split("generated ")[1].split(" tokens")[0])
    assert 0 < generated < 4 * 16384 and "wrote" in output, output
    assert output.count("notes (stopped)") == 4, output  # every alternative ended by the stop, none by its budget
    notes = 0
    for k in (1, 2, 3, 4):
        messages = list(mido.MidiFile(tmp_path / f"cut-{k}.mid"))
        on = sum(m.type == "note_on" and m.velocity > 0 for m in messages)
        off = sum(m.type == "note_off" or (m.type == "note_on" and m.velocity == 0) for m in messages)
        assert on == off  # every note released
        notes += on
    assert notes


@pytest.mark.jack
def test_a_stop_while_a_duet_tries_the_built_in_piano_ends_the_take_stopped(jack_server, tiny_checkpoint, tmp_path):
    """Stop pressed while the duet's output is being chosen (the built-in piano tried, the virtual
    port not yet open) is honoured: the take ends "stopped" at once, nothing sounds on, no port is
    left open. It used to reach only the piano's player, which the virtual port's replaced, so the
    duet went on listening until stopped a second time."""
    from engine.generate.performance import Knobs, OutputChoice, Performance, PerformanceSettings

    choice = OutputChoice(api="jack", audio_driver=NO_SOUND, lookahead=0.3)
    notices: list[str] = []

    def on_notice(notice) -> None:  # the pane shows it: the piano could not sound, the virtual port is next
        notices.append(notice.kind)
        if notice.kind == "instead":
            app.stop()

    app = Performance(PerformanceSettings(checkpoint=tiny_checkpoint, output=choice, midi_in="virtual"), Knobs(),
                      on_notice=on_notice)
    ended: list[str] = []

    def pane_worker() -> None:  # the Generate pane's one call
        ended.append(app.perform().reason)

    worker = threading.Thread(target=pane_worker, daemon=True)
    try:
        worker.start()
        worker.join(30)
        hung = worker.is_alive()
        if hung:
            app.stop()  # the second press: let the thread end
            worker.join(30)
    finally:
        app.close()
    assert notices[:1] == ["instead"], notices
    assert not hung and ended == ["stopped"], ended
    assert not _virtual_output_open()
    messages = list(mido.MidiFile(app.save(tmp_path / "stopped.mid")[0]))
    on = sum(m.type == "note_on" and m.velocity > 0 for m in messages)
    assert on == sum(m.type == "note_off" or (m.type == "note_on" and m.velocity == 0) for m in messages)

"""Real JACK (private dummy-driver server): streamed notes arrive in order and on time, nothing is left sounding."""
from __future__ import annotations

import statistics
import subprocess
import threading
import time
from pathlib import Path

import mido
import pytest

from engine.midi import LookaheadScheduler, PortError, control_change, list_ports, note_off, note_on, open_output, write_midi_file
from jack_server import MidiReceiver, jack_server, receiver, sounding_after, stuck_notes, tiny_checkpoint  # noqa: F401  (fixtures)

pytestmark = pytest.mark.jack


def dense_phrase(seconds: float = 2.0) -> list:
    """Chords, a melody with repeated pitches, and pedal: what a piano model streams."""
    events, t, i = [control_change(0.0, 64, 127)], 0.0, 0
    while t < seconds:
        for pitch in (48 + i % 5, 55 + i % 3, 64 + i % 7):
            events += [note_on(t, pitch, 70 + i % 30), note_off(t + 0.09, pitch)]
        t += 0.0625
        i += 1
        if i % 16 == 0:
            events += [control_change(t - 0.01, 64, 0), control_change(t, 64, 127)]
    events.append(control_change(t, 64, 0))
    return events


def stream_like_a_model(sched: LookaheadScheduler, events: list, chunk: float = 0.125) -> None:
    """Submit the phrase chunk by chunk only when the lookahead has room, as generation does."""
    events = sorted(events, key=lambda e: (e.time, e.order))  # stable, as the file writer orders them
    i, horizon = 0, 0.0
    while i < len(events):
        if not sched.wait_for_room(0.02):
            continue
        horizon += chunk
        batch = []
        while i < len(events) and events[i].time < horizon:
            batch.append(events[i])
            i += 1
        sched.submit(batch, horizon=horizon)
    sched.finish()


def test_ports_lists_the_receiver_and_opens_it_by_substring(receiver):
    assert receiver.port_name in list_ports("jack")["jack"]
    out = open_output("jack", "test-recv")
    assert out.target == receiver.port_name and out.is_alive()
    out.close()
    with pytest.raises(PortError) as caught:
        open_output("jack", "no-such-synth")
    # one sentence that lists the ports and says where to look, not wrapped in "Could not open ..." with the hint twice
    assert str(caught.value).startswith("No MIDI output port matches 'no-such-synth'; available ports: ")
    assert receiver.port_name in str(caught.value) and str(caught.value).count("--headless ports") == 1


def test_ports_command_lists_jack_ports(receiver):
    from typer.testing import CliRunner

    from pianomuse_tui.cli import app

    result = CliRunner().invoke(app, ["--headless", "ports", "--midi-api", "jack"])
    assert result.exit_code == 0, result.output
    assert "jack output ports:" in result.output and receiver.port_name in result.output


def timing_errors(got: list, expected: list) -> list[float]:
    """Sorted |arrival - written time| per event (seconds), after removing JACK's constant port latency."""
    offsets = [rt - et for (rt, _), (et, _) in zip(got, expected)]
    base = statistics.median(offsets)
    return sorted(abs(o - base) for o in offsets)


def _play_phrase_and_measure(receiver, path):
    """Stream a dense phrase to the receiver; return (events sent, events received, p99 error s, telemetry)."""
    events = dense_phrase(2.0)
    already = len(receiver.received())
    out = open_output("jack", receiver.port_name)
    sched = LookaheadScheduler(out, lookahead=0.5, record=True)
    sched.start()
    stream_like_a_model(sched, events)
    assert sched.wait_done(10)
    time.sleep(0.05)
    sched.stop()
    out.close()

    write_midi_file(events, path)
    expected, t = [], 0.0
    for msg in mido.MidiFile(path):
        t += msg.time
        if not msg.is_meta:
            expected.append((t, tuple(msg.bytes())))
    got = receiver.received_settled()[already:]
    errors = timing_errors(got, expected)
    p99 = errors[int(0.99 * (len(errors) - 1))]
    print(f"\nJACK timing: {len(errors)} events, error p99 {p99 * 1e3:.2f} ms, max {errors[-1] * 1e3:.2f} ms; "
          + sched.telemetry().summary())
    return expected, got, p99, sched.telemetry()


def test_streamed_phrase_arrives_complete_in_order_and_on_time(receiver, tmp_path):
    expected, got, p99, telemetry = _play_phrase_and_measure(receiver, tmp_path / "phrase.mid")
    played = [d for _, d in got][: len(expected)]
    assert played == [d for _, d in expected]  # every event, in order
    assert sounding_after([d for _, d in got]) == {}
    assert telemetry.underruns == 0
    takes = [p99]
    while p99 >= 0.003 and len(takes) < 3:
        # a hiccup of a shared machine (another process took the core) gets another take; the
        # issue's bound must hold for one take: p99 timing error under 3 ms against the written file
        _, again, p99, _ = _play_phrase_and_measure(receiver, tmp_path / f"phrase{len(takes)}.mid")
        assert sounding_after([d for _, d in again]) == {}
        takes.append(p99)
    assert p99 < 0.003, f"p99 timing error per take {[round(t * 1e3, 2) for t in takes]} ms (bench/midi_timing.py measures it in detail)"


def test_stop_mid_phrase_leaves_no_note_sounding(receiver):
    out = open_output("jack", receiver.port_name)
    sched = LookaheadScheduler(out, lookahead=0.5)
    events = [control_change(0.0, 64, 127)] + [e for i in range(20) for e in (note_on(i * 0.03, 50 + i, 90), note_off(i * 0.03 + 2.0, 50 + i))]
    sched.submit(events)
    sched.start()
    time.sleep(0.35)
    assert sched.telemetry().notes_sounding >= 5
    sched.stop()
    time.sleep(0.1)
    out.close()
    got = [d for _, d in receiver.received_settled()]
    assert any(d[0] & 0xF0 == 0x90 for d in got)
    assert stuck_notes(receiver, got) == {}  # real note-offs, not just CC123
    assert (0xB0, 64, 0) in got and (0xB0, 123, 0) in got


def test_watchdog_releases_a_stuck_note_on_the_wire(receiver):
    out = open_output("jack", receiver.port_name)
    sched = LookaheadScheduler(out, max_note_seconds=0.2)
    sched.submit([note_on(0.0, 70, 100)])
    sched.start()
    time.sleep(0.5)
    tel = sched.telemetry()
    sched.stop(panic=False)
    out.close()
    assert tel.watchdog_releases == 1
    assert [d for _, d in receiver.received()] == [(0x90, 70, 100), (0x80, 70, 0)]


def test_disappearing_port_is_reported_and_reconnect_continues(jack_server):
    first = MidiReceiver("pm-test-synth")
    out = open_output("jack", "pm-test-synth")
    lost = threading.Event()
    reports = []
    sched = LookaheadScheduler(out, lookahead=0.5, port_check_interval=0.05, on_port_lost=lambda m: (reports.append(m), lost.set()))
    events = [e for i in range(40) for e in (note_on(i * 0.05, 60 + i % 12, 80), note_off(i * 0.05 + 0.04, 60 + i % 12))]
    sched.submit(events)
    sched.start()
    time.sleep(0.4)
    first.close()  # the synth quits mid-performance
    assert lost.wait(3), "a vanished port must be reported"
    assert "disappeared" in reports[0]
    assert sched.telemetry().port_state == "lost"
    queued = sched.telemetry().events_queued
    assert 0 < queued < len(events)
    second = MidiReceiver("pm-test-synth")  # the synth comes back under the same name
    try:
        sched.reconnect()
        sched.finish()
        assert sched.wait_done(10)
        time.sleep(0.05)
        sched.stop()
        got = [d for _, d in second.received_settled()]
        first_part = [d for _, d in first.messages]
        assert len([d for d in got if d[0] & 0xF0 in (0x80, 0x90)]) >= queued  # the rest of the phrase played
        assert sounding_after(first_part + got) == {}
    finally:
        out.close()
        second.close()


def test_ctrl_c_during_live_generation_releases_everything_and_writes_the_file(receiver, tiny_checkpoint, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "live.mid"
    cmd = [sys.executable, "-m", "pianomuse_tui.cli", "--headless", "generate", "--checkpoint", str(tiny_checkpoint),
           "--bars", "64", "--max-tokens", "3000", "--seed", "1", "--midi-api", "jack", "--port", "test-recv",
           "--lookahead", "0.3", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 60
        while not any(d[0] & 0xF0 == 0x90 for _, d in receiver.received()) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.05)
        time.sleep(1.0)  # mid-performance
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "every note was released" in output and "lateness" in output
    got = [d for _, d in receiver.received_settled()]
    note_ons = [d for d in got if d[0] & 0xF0 == 0x90 and d[2] > 0]
    assert note_ons
    assert stuck_notes(receiver, got) == {}
    assert (0xB0, 123, 0) in got
    written = [tuple(m.bytes()) for m in mido.MidiFile(out) if m.type == "note_on" and m.velocity > 0]
    assert written[: len(note_ons)] == note_ons  # what played is the start of what was written


def test_generate_reports_a_vanished_synth_and_reconnects_when_it_returns(jack_server, tiny_checkpoint, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    first = MidiReceiver("pm-test-synth")
    cmd = [sys.executable, "-m", "pianomuse_tui.cli", "--headless", "generate", "--checkpoint", str(tiny_checkpoint),
           "--bars", "64", "--max-tokens", "3000", "--seed", "2", "--midi-api", "jack", "--port", "pm-test-synth",
           "--lookahead", "0.3", "--out", str(tmp_path / "take.mid")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    second = None
    try:
        deadline = time.monotonic() + 60
        while not first.received() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.05)
        first.close()  # the synth quits
        time.sleep(1.5)
        assert proc.poll() is None  # the session waits for it
        second = MidiReceiver("pm-test-synth")  # and comes back
        deadline = time.monotonic() + 20
        while not any(d[0] & 0xF0 in (0x80, 0x90) for _, d in second.received()) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        output = " ".join(proc.communicate(timeout=30)[0].decode().split())
    finally:
        if proc.poll() is None:
            proc.kill()
    got = [d for _, d in second.received_settled()]
    second.close()
    assert "disappeared" in output and "reconnected" in output, output
    assert proc.returncode == 130, output
    assert any(d[0] & 0xF0 in (0x80, 0x90) for d in got)  # playback went on after reconnecting
    assert stuck_notes(second, got) == {}


def test_virtual_port_pianomuse_is_created_and_a_synth_connected_to_it_hears_the_stream(receiver, jack_server):
    import subprocess

    def jack_ports() -> list[str]:
        return subprocess.run(["jack_lsp", "-s", jack_server.name], capture_output=True, text=True).stdout.split("\n")

    out = open_output("jack", virtual=True)
    try:
        assert "PianoMuse:PianoMuse" in jack_ports() and out.is_alive()
        # the user (or a patchbay) connects the synth to our port
        subprocess.run(["jack_connect", "-s", jack_server.name, "PianoMuse:PianoMuse", receiver.port_name], check=True, timeout=10)
        sched = LookaheadScheduler(out, lookahead=0.5)
        sched.submit([note_on(0.0, 60, 90), note_on(0.05, 64, 90), note_off(0.2, 60), note_off(0.25, 64)])
        sched.start()
        sched.finish()
        assert sched.wait_done(10)
        time.sleep(0.05)
        sched.stop()
    finally:
        out.close()
    got = [d for _, d in receiver.received_settled()]
    assert [d for d in got if d[0] & 0xF0 in (0x80, 0x90)] == [(0x90, 60, 90), (0x90, 64, 90), (0x80, 60, 0), (0x80, 64, 0)]
    assert "PianoMuse:PianoMuse" not in jack_ports()  # closed with the session


def _generate_live_take(receiver, model, tok, path):
    """The bundled model continues a prompt through the engine's take loop (both faces play through it); returns the
    messages of the written file and what arrived, each as (seconds, bytes), and the telemetry."""
    from engine.generate import SamplingConfig
    from engine.generate.live import build_session
    from engine.paths import CORPUS_DIR
    from engine.midi import LivePlayer
    from engine.generate.performance import play_generated

    session = build_session(model, tok, prompt=CORPUS_DIR / "piano" / "joplin_maple_leaf_rag.mid", prompt_bars="1",
                            sampling=SamplingConfig(seed=1), bars=2, max_tokens=600)
    already = len(receiver.received())
    out = open_output("jack", receiver.port_name)
    sched = LookaheadScheduler(out, lookahead=0.5)
    try:
        assert play_generated(LivePlayer(scheduler=sched), session) == "finished"
    finally:
        sched.stop()
        out.close()
    session.write_midi(0, path)
    expected, t = [], 0.0
    for msg in mido.MidiFile(path):
        t += msg.time
        if not msg.is_meta:
            expected.append((t, tuple(msg.bytes())))
    return expected, receiver.received()[already:], sched.telemetry()


def test_the_bundled_model_streamed_live_arrives_as_the_written_file_says(receiver, tmp_path):
    import torch

    from engine.generate.live import load_generator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tok, _ = load_generator(None)
        takes = []
        while len(takes) < 3:
            expected, got, telemetry = _generate_live_take(receiver, model, tok, tmp_path / f"take{len(takes)}.mid")
            assert len(expected) > 20 and sum(d[0] & 0xF0 == 0x90 for _, d in expected) >= 8
            assert [d for _, d in got[: len(expected)]] == [d for _, d in expected]  # every event, in order
            assert sounding_after([d for _, d in got]) == {}
            errors = timing_errors(got, expected)
            takes.append((errors[int(0.99 * (len(errors) - 1))], telemetry.underruns))
            # a take where the shared machine stalled the model (an underrun shifts the rest of the
            # take by design) or the sender is retaken; one take must meet the bound
            if takes[-1][0] < 0.003 and takes[-1][1] == 0:
                break
    finally:
        torch.set_num_threads(threads)
    print(f"\nlive bundled model on JACK: {len(expected)} events, (p99 error s, underruns) per take {takes}")
    assert takes[-1][0] < 0.003 and takes[-1][1] == 0, f"(p99 s, underruns) per take: {takes}"


@pytest.mark.parametrize("signals, gap", [(("SIGINT", "SIGINT"), 0.1), (("SIGTERM", "SIGTERM"), 0.1), (("SIGINT",) * 6, 0.02)])
def test_signals_in_quick_succession_during_live_play_release_every_note_and_write_the_take(receiver, tiny_checkpoint, tmp_path, signals, gap):
    """Issue 18 item 2: a second Ctrl-C or SIGTERM ~0.1 s after the first used to land while the player
    waited for its threads, before it released the notes: notes kept sounding and the take was lost."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "double.mid"
    cmd = [sys.executable, "-m", "pianomuse_tui.cli", "--headless", "generate", "--checkpoint", str(tiny_checkpoint),
           "--bars", "64", "--max-tokens", "3000", "--seed", "1", "--midi-api", "jack", "--port", "test-recv",
           "--lookahead", "0.3", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 60
        while not any(d[0] & 0xF0 == 0x90 for _, d in receiver.received()) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.05)
        time.sleep(1.0)  # mid-performance, chords sounding
        for name in signals:
            proc.send_signal(getattr(signal, name))
            time.sleep(gap)
        output = proc.communicate(timeout=30)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in output, output
    got = [d for _, d in receiver.received_settled()]
    note_ons = [d for d in got if d[0] & 0xF0 == 0x90 and d[2] > 0]
    assert note_ons
    assert stuck_notes(receiver, got) == {}  # each one released
    assert (0xB0, 123, 0) in got
    written = [tuple(m.bytes()) for m in mido.MidiFile(out) if m.type == "note_on" and m.velocity > 0]
    assert written[: len(note_ons)] == note_ons  # the take holds what played


def test_sigterm_during_live_generation_stops_like_ctrl_c(receiver, tiny_checkpoint, tmp_path):
    """`kill` (or closing the terminal) must not leave the synth droning: the command releases everything."""
    import os
    import signal

    import torch
    from typer.testing import CliRunner

    from pianomuse_tui.cli import app

    def terminate_once_playing() -> None:
        deadline = time.monotonic() + 30
        while not any(d[0] & 0xF0 == 0x90 for _, d in receiver.received()) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)  # mid-performance: 64 bars take far longer
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_once_playing, daemon=True)
    threads = torch.get_num_threads()
    before = signal.getsignal(signal.SIGTERM)
    killer.start()
    try:
        result = CliRunner().invoke(app, ["--headless", "generate", "--checkpoint", str(tiny_checkpoint), "--bars", "64",
                                          "--max-tokens", "3000", "--seed", "3", "--midi-api", "jack", "--port", "test-recv",
                                          "--lookahead", "0.3", "--out", str(tmp_path / "killed.mid")])
    finally:
        killer.join(timeout=35)
        torch.set_num_threads(threads)
    assert signal.getsignal(signal.SIGTERM) is before  # the command's handler is gone again
    assert result.exit_code == 130, result.output
    assert "every note was released" in " ".join(result.output.split())
    got = [d for _, d in receiver.received_settled()]
    assert any(d[0] & 0xF0 == 0x90 for d in got)
    assert stuck_notes(receiver, got) == {}
    assert (0xB0, 123, 0) in got and (tmp_path / "killed.mid").is_file()


def test_a_program_that_exits_without_stopping_still_releases_its_notes(receiver):
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from engine.midi import LookaheadScheduler, control_change, note_off, note_on, open_output\n"
        f"out = open_output('jack', {receiver.port_name!r})\n"
        "sched = LookaheadScheduler(out, port_check_interval=0)\n"
        "sched.submit([control_change(0.0, 64, 127)] + [note_on(0.01 * i, 60 + i, 90) for i in range(4)]"
        " + [note_off(5.0, 60 + i) for i in range(4)])\n"
        "sched.start()\n"
        "time.sleep(0.3)\n"
        "sys.exit(0)  # no stop(): the scheduler's exit hook must release the notes\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    got = [d for _, d in receiver.received_settled()]
    assert [d for d in got if d[0] & 0xF0 == 0x90] == [(0x90, 60 + i, 90) for i in range(4)]
    assert stuck_notes(receiver, got) == {}
    assert (0xB0, 64, 0) in got and (0xB0, 123, 0) in got


def test_a_killed_test_process_leaves_no_jack_server_behind(tmp_path):
    """The tests' private JACK server ends with the process that started it, even one killed outright:
    a leaked jackd keeps one of JACK's 8 server slots, and eight of them stop every later run."""
    import signal as _signal
    import sys as _sys

    here = Path(__file__).resolve().parent
    script = tmp_path / "start_and_wait.py"
    script.write_text(f"import sys, time\nsys.path.insert(0, {str(here)!r})\nfrom jack_server import JackServer\n"
                      "with JackServer() as server:\n    print(server.name, flush=True)\n    time.sleep(60)\n")
    child = subprocess.Popen([_sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        name = child.stdout.readline().strip()
        assert name, "the child did not start its server"
        assert subprocess.run(["jack_lsp", "-s", name], capture_output=True).returncode == 0
        child.send_signal(_signal.SIGKILL)
        child.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and subprocess.run(["pgrep", "-f", f"jackd -n {name} "]).returncode == 0:
            time.sleep(0.1)
        assert subprocess.run(["pgrep", "-f", f"jackd -n {name} "], capture_output=True).returncode != 0, "jackd outlived its test"
    finally:
        child.kill()
        child.stdout.close()

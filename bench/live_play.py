"""Playing with the model, measured on the CPU with the bundled model (1 thread), and the built-in synth.

    python bench/live_play.py [--handovers 30] [--feed-seconds 10] [--markdown] [--list]

1. Handover latency: a scripted pianist (messages put straight into the duet's input queue with
   their monotonic arrival times, as the rtmidi callback does) plays a short phrase, then either
   pauses (--pause 0.6 s) or presses the takeover CC; from that moment to the model's first note
   leaving the scheduler (wall clock, ``sent_log``), and to the note's scheduled time (music clock);
   how many first notes left late (over 5 ms after their time), the duet's own report of the
   latency (``Handover.latency``, lateness included), and the earliest time the duet found it could
   meet (``Handover.earliest``: the first note's tokens at the recent cost per token, or ``--lead``).
   ``--list`` prints every handover.
1b. Take-back (--takeback release and finish): in the same script each phrase after the first takes
   the floor back; per model note held at that moment, its note-off's send time against when it was
   due (at once, or the model's written end capped at a bar) and against the pianist's key.
2. Feed rate: a 20 notes/s passage (a two-octave scale, 25 ms gaps) for ``--feed-seconds``; per
   note, the delay from its release to its tokens being in the RNN state; the backlog must not grow
   (second half vs first half).
3. Built-in synth onset error: notes rendered offline (sample-exact) and live through the player in
   capture mode (rendered block by block as a sound card pulls them); onsets found in the audio
   minus the scheduled ones.
4. Synth choice: pyfluidsynth (libfluidsynth) against tinysoundfont (if importable) in the same run:
   import, SoundFont load and render speed.
"""
from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))] if values else float("nan")


def duet_rig(mode="continue", **config):
    import torch

    from engine.generate.duet import Duet, DuetConfig
    from engine.generate.live import build_session, load_generator
    from engine.midi import LivePlayer, LookaheadScheduler
    from midi_helpers import FakeOutput

    torch.set_num_threads(1)
    model, tok, _ = load_generator(None)
    session = build_session(model, tok)
    sched = LookaheadScheduler(FakeOutput(), lookahead=0.25, port_check_interval=0, record=True)
    player = LivePlayer(scheduler=sched)
    messages: queue.Queue = queue.Queue()
    duet = Duet(session, DuetConfig(mode=mode, **config), player, messages)
    return player, sched, duet, messages


def run_along(player, duet, script):
    thread = threading.Thread(target=script, daemon=True)
    thread.start()
    duet.play()
    thread.join(30)
    player.close()


def handover_pianist(n: int, pause: float, player, messages):
    """Six notes, then a pause or the takeover CC (alternately), n times; each phrase after the
    first takes the floor back from the model."""
    press = lambda data: messages.put((time.monotonic(), data))  # noqa: E731

    def pianist():
        time.sleep(0.3)
        for k in range(n):
            for p in (60, 64, 67, 72, 67, 64):
                press((0x90, p, 80))
                time.sleep(0.08)
                press((0x80, p, 0))
                time.sleep(0.02)
            if k % 2:
                time.sleep(0.05)
                press((0xB0, 67, 127))
                press((0xB0, 67, 0))
                time.sleep(0.6)
            else:
                time.sleep(pause + 0.6)
        player.stop()

    return pianist


def handover_latency(n: int, pause: float, listing: bool = False) -> dict:
    player, sched, duet, messages = duet_rig(pause=pause)
    run_along(player, duet, handover_pianist(n, pause, player, messages))
    origin = sched._origin
    sent_on = [(sent, target) for target, sent, data in sched.sent_log if data[0] == 0x90 and data[2] > 0]
    wall, scheduled, reported, earliest, late = [], [], [], [], 0
    for k, h in enumerate(duet.handovers, 1):
        if h.first_note is None:
            continue
        at = origin + h.at
        first = next(((sent, target) for sent, target in sent_on if target >= origin + h.first_note - 1e-6), None)
        if first is not None:
            wall.append(first[0] - at)
            scheduled.append(h.first_note - h.at)
            reported.append(h.latency)
            earliest.append(h.earliest - h.at)
            late += first[0] - first[1] > 0.005
            if listing:
                print(f"  handover {k:2d} ({h.reason}): earliest {1e3 * earliest[-1]:5.1f} ms, scheduled "
                      f"{1e3 * scheduled[-1]:5.1f} ms, sent {1e3 * wall[-1]:5.1f} ms ({1e3 * (first[0] - first[1]):.1f} ms after its time), "
                      f"{h.drawn} tokens drawn before its note-on")
    return {"handovers": len(duet.handovers), "measured": len(wall), "reasons": sorted({h.reason for h in duet.handovers}),
            "wall_p50": pct(wall, 0.5), "wall_p99": pct(wall, 0.99), "wall_max": max(wall, default=float("nan")),
            "sched_p50": pct(scheduled, 0.5), "sched_p99": pct(scheduled, 0.99), "late": late,
            "reported_p99": pct(reported, 0.99), "earliest_p50": pct(earliest, 0.5), "earliest_max": max(earliest, default=float("nan"))}


def takeback_timing(n: int, pause: float, takeback: str) -> dict:
    """Each time the pianist plays again (the handover script: n take-backs), per model note held at
    the cut: when its note-off left the scheduler against when it was due (the model's written end,
    capped at a bar, for "finish"; the cut for "release"), and from the pianist's key to it."""
    player, sched, duet, messages = duet_rig(pause=pause, takeback=takeback)
    run_along(player, duet, handover_pianist(n, pause, player, messages))
    origin = sched._origin
    late, from_key, rang, capped, pedals, cut_short = [], [], [], 0, 0, 0
    for cut, _ in duet.takebacks:
        key = max((e.time for e in duet.take.human if e.is_note_on and e.time <= cut + 1e-9), default=None)
        before = [e for e in duet.take.model if e.time < cut]
        pedal = [e.data[2] for e in before if e.status == 0xB0 and e.data[1] == 64]
        pedals += bool(pedal) and pedal[-1] >= 64
        for on in (e for e in before if e.is_note_on):
            off = next((e for e in duet.take.model if e.is_note_off and e.data[1] == on.data[1] and e.time >= on.time), None)
            if off is None or off.time < cut or key is None:
                continue
            due = max(off.time, cut)
            # the queued release (a release due at once is queued just ahead of the playhead)
            sent = next((s for target, s, data in sched.sent_log if data[:2] == (0x80, on.data[1])
                         and origin + cut - 1e-3 <= target <= origin + due + 0.05), None)
            if sent is None:  # the model took the floor again first: its last notes ended then, at once
                cut_short += 1
                continue
            late.append(sent - (origin + due))
            from_key.append(sent - (origin + key))
            rang.append(off.time - cut)
            capped += off.time >= cut + duet.seconds_per_bar - 1e-6
    return {"takeback": takeback, "takebacks": len(duet.takebacks), "held": len(late), "capped": capped, "pedal_down": pedals,
            "cut_short": cut_short, "late_p50": pct(late, 0.5), "late_p99": pct(late, 0.99), "late_max": max(late, default=float("nan")),
            "key_p50": pct(from_key, 0.5), "key_p99": pct(from_key, 0.99),
            "rang_p50": pct(rang, 0.5), "rang_max": max(rang, default=float("nan"))}


def feed_rate(seconds: float) -> dict:
    player, sched, duet, messages = duet_rig(pause=30.0)
    press = lambda data: messages.put((time.monotonic(), data))  # noqa: E731
    scale = [48, 50, 52, 53, 55, 57, 59, 60, 62, 64, 65, 67, 69, 71, 72, 71, 69, 67, 65, 64, 62, 60, 59, 57, 55, 53, 52, 50]
    played = int(seconds * 20)

    def pianist():
        time.sleep(0.3)
        start = time.monotonic()
        for i in range(played):
            at = start + i * 0.05
            time.sleep(max(0.0, at - time.monotonic()))
            press((0x90, scale[i % len(scale)], 70 + i % 30))
            time.sleep(max(0.0, at + 0.025 - time.monotonic()))
            press((0x80, scale[i % len(scale)], 0))
        time.sleep(0.5)
        player.stop()

    cpu0 = time.thread_time()
    run_along(player, duet, pianist)
    cpu = time.thread_time() - cpu0
    delays = duet.feed_delays
    half = len(delays) // 2
    return {"played": played, "fed": duet.fed_notes, "tokens": len(duet.session.forced),
            "delay_p50": pct(delays, 0.5), "delay_p99": pct(delays, 0.99), "delay_max": max(delays, default=float("nan")),
            "first_half_p50": pct(delays[:half], 0.5), "second_half_p50": pct(delays[half:], 0.5),
            "cpu_share": cpu / (seconds + 0.8)}


def synth_onsets() -> dict:
    import numpy as np

    from engine.midi import LivePlayer, OutputChoice, note_off, note_on
    from engine.midi.builtin_synth import SAMPLE_RATE, onsets, render

    times = [0.25 + 0.7 * i + 0.013 * (i % 7) for i in range(24)]  # 0.7 s apart: each attack stands out of the last release
    events = []
    for i, t in enumerate(times):
        pitch = (48, 60, 64, 67, 72, 55)[i % 6]
        events += [note_on(t, pitch, (60, 80, 100, 110)[i % 4]), note_off(t + 0.1, pitch)]

    def errors(found, scheduled):
        """Signed error per scheduled onset found within 50 ms (a note not found there counts as missed)."""
        near = [min(found, key=lambda f: abs(f - s)) - s for s in scheduled] if found else []
        return [e for e in near if abs(e) <= 0.05]

    stereo = render(events)
    offline = errors(onsets(stereo.astype(np.float32).reshape(-1, 2).mean(axis=1) / 32768), times)
    player = LivePlayer(OutputChoice(synth="builtin", audio_driver="capture", lookahead=0.3))
    player.open()
    player.scheduler.record = True
    player.play([(events, times[-1] + 0.3, 0)])
    time.sleep(0.5)  # the last attack's blocks
    first, mono = player.synth.captured()
    sent = [target for target, _, data in player.scheduler.sent_log if data[0] == 0x90]
    block = player.synth.block
    player.close()
    live = errors([first + t for t in onsets(mono)], sent)
    return {"notes": len(times), "offline_found": len(offline), "live_found": len(live), "offline_p50": pct(offline, 0.5), "offline_p99": pct([abs(e) for e in offline], 0.99),
            "live_p50": pct(live, 0.5), "live_p99": pct([abs(e) for e in live], 0.99), "block_ms": 1000 * block / SAMPLE_RATE}


def synth_choice() -> list[dict]:
    from engine.midi.builtin_synth import find_soundfont

    sf2 = str(find_soundfont())
    rows = []
    t = time.perf_counter()
    import fluidsynth
    imported = time.perf_counter() - t
    synth = fluidsynth.Synth(gain=0.5, samplerate=44100.0)
    t = time.perf_counter()
    synth.sfload(sf2, 1)
    loaded = time.perf_counter() - t
    for p in (48, 60, 64, 67):
        synth.noteon(0, p, 90)
    t = time.perf_counter()
    for _ in range(10):
        synth.get_samples(44100)
    speed = 10 / (time.perf_counter() - t)
    synth.delete()
    rows.append({"synth": "pyfluidsynth 1.4.0 + libfluidsynth 2.3", "import_ms": imported * 1e3, "load_s": loaded, "x_realtime": speed})
    try:
        t = time.perf_counter()
        import tinysoundfont
        imported = time.perf_counter() - t
    except ImportError:
        rows.append({"synth": "tinysoundfont 0.3.7", "import_ms": float("nan"), "load_s": float("nan"), "x_realtime": float("nan")})
        return rows
    synth = tinysoundfont.Synth(samplerate=44100)
    t = time.perf_counter()
    sfid = synth.sfload(sf2)
    loaded = time.perf_counter() - t
    synth.program_select(0, sfid, 0, 0)
    for p in (48, 60, 64, 67):
        synth.noteon(0, p, 90)
    t = time.perf_counter()
    for _ in range(10):
        synth.generate(44100)
    speed = 10 / (time.perf_counter() - t)
    rows.append({"synth": "tinysoundfont 0.3.7", "import_ms": imported * 1e3, "load_s": loaded, "x_realtime": speed})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--handovers", type=int, default=30)
    ap.add_argument("--pause", type=float, default=0.6)
    ap.add_argument("--feed-seconds", type=float, default=10.0)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--list", action="store_true", help="print every handover")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    h = handover_latency(args.handovers, args.pause, args.list)
    print(f"handover -> first model note ({h['measured']} of {h['handovers']} handovers, {', '.join(h['reasons'])}): "
          f"sent p50 {h['wall_p50'] * 1e3:.1f} ms, p99 {h['wall_p99'] * 1e3:.1f} ms, max {h['wall_max'] * 1e3:.1f} ms; "
          f"scheduled p50 {h['sched_p50'] * 1e3:.1f} ms, p99 {h['sched_p99'] * 1e3:.1f} ms; {h['late']} left over 5 ms late; "
          f"the duet reported p99 {h['reported_p99'] * 1e3:.1f} ms; earliest it could meet p50 {h['earliest_p50'] * 1e3:.1f} ms, "
          f"max {h['earliest_max'] * 1e3:.1f} ms after the handover")
    for takeback in ("release", "finish"):
        t = takeback_timing(args.handovers, args.pause, takeback)
        print(f"take-back --takeback {takeback} ({t['takebacks']} take-backs, {t['held']} model notes held at the cut, "
              f"{t['capped']} capped at a bar, {t['cut_short']} ended early by the next handover, the model's pedal down at "
              f"{t['pedal_down']}): note-off sent vs due p50 {t['late_p50'] * 1e3:.1f} ms, p99 {t['late_p99'] * 1e3:.1f} ms, "
              f"max {t['late_max'] * 1e3:.1f} ms; from your key p50 {t['key_p50'] * 1e3:.1f} ms, p99 {t['key_p99'] * 1e3:.1f} ms; "
              f"rang on after the cut p50 {t['rang_p50'] * 1e3:.0f} ms, max {t['rang_max'] * 1e3:.0f} ms")
    f = feed_rate(args.feed_seconds)
    print(f"feed, 20 notes/s for {args.feed_seconds:g} s: {f['fed']} of {f['played']} notes fed ({f['tokens']} tokens); "
          f"release -> in the state p50 {f['delay_p50'] * 1e3:.1f} ms, p99 {f['delay_p99'] * 1e3:.1f} ms, "
          f"max {f['delay_max'] * 1e3:.1f} ms; first half p50 {f['first_half_p50'] * 1e3:.1f} ms, second half "
          f"{f['second_half_p50'] * 1e3:.1f} ms; generation thread CPU {100 * f['cpu_share']:.0f}% of one core")
    s = synth_onsets()
    print(f"built-in synth onsets ({s['notes']} notes; found offline {s['offline_found']}, live {s['live_found']}): offline signed p50 {s['offline_p50'] * 1e3:.2f} ms, |p99| "
          f"{s['offline_p99'] * 1e3:.2f} ms; live (capture, {s['block_ms']:.1f} ms blocks) signed p50 {s['live_p50'] * 1e3:.2f} ms, "
          f"|p99| {s['live_p99'] * 1e3:.2f} ms")
    for row in synth_choice():
        print(f"{row['synth']}: import {row['import_ms']:.0f} ms, FluidR3_GM load {row['load_s']:.2f} s, "
              f"renders {row['x_realtime']:.0f}x real time (4 notes)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

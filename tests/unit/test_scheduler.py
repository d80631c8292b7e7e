"""LookaheadScheduler with an injected clock: exact absolute targets, no drift, panic, watchdog, lost ports."""
from __future__ import annotations

import time

import mido
import pytest

from engine.midi import LookaheadScheduler, MidiEvent, NoteTracker, control_change, note_off, note_on, write_midi_file
from midi_helpers import FakeClock, FakeOutput


def phrase(n_notes: int, step: float = 0.01, length: float = 0.015) -> list[MidiEvent]:
    events = []
    for i in range(n_notes):
        pitch = 40 + (i * 7) % 48
        events += [note_on(i * step, pitch, 64 + i % 40), note_off(i * step + length, pitch)]
    return events


def unreleased(sent: list[tuple[int, ...]]) -> int:
    tracker = NoteTracker()
    for data in sent:
        tracker.observe(data, 0.0)
    return tracker.count


def test_ten_thousand_events_hit_exact_absolute_targets_without_drift():
    clock = FakeClock(jitter=0.0003)
    out = FakeOutput()
    events = phrase(5000)  # 10,000 events over 50 s of music
    sched = LookaheadScheduler(out, lookahead=0.5, clock=clock, record=True, port_check_interval=0)
    sched.submit(events)
    sched.finish()
    origin = clock.now() + sched.start_delay
    sched.start()
    assert sched.wait_done(30)
    sched.stop()
    log = sched.sent_log
    assert len(log) == 10_000
    expected = sorted(events)
    for (target, sent, data), event in zip(log, expected):
        assert target == origin + event.time  # absolute target, never now + delta
        assert data == event.data
        assert 0 <= sent - target <= 0.0003 + 1e-9  # wake-up error does not accumulate
    tel = sched.telemetry()
    assert tel.events_sent == 10_000 and tel.underruns == 0 and tel.lateness_max_ms <= 0.31
    assert unreleased(out.sent) == 0


def test_cancel_mid_phrase_sends_pending_note_offs_then_all_notes_off_and_sustain_off():
    clock = FakeClock(limit=1000.0 + 0.05 + 0.3)  # time stops 0.3 s into the music
    out = FakeOutput()
    events = [control_change(0.0, 64, 127)]
    for i in range(8):
        events += [note_on(i * 0.05, 60 + i, 90), note_off(i * 0.05 + 1.0, 60 + i)]  # long, overlapping notes
    sched = LookaheadScheduler(out, clock=clock, port_check_interval=0)
    sched.submit(events)
    sched.start()
    deadline = time.monotonic() + 5
    while sched.telemetry().notes_sounding < 7 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sched.telemetry().notes_sounding == 7  # notes 0..6 started by t=0.3, none released
    sched.stop()
    assert unreleased(out.sent) == 0
    tail = out.sent[-32:]
    assert all(d[0] & 0xF0 == 0xB0 for d in tail)
    assert {(d[0] & 0x0F, d[1], d[2]) for d in tail} == {(ch, cc, 0) for ch in range(16) for cc in (64, 123)}
    offs = [d for d in out.sent if d[0] & 0xF0 == 0x80]
    assert sorted(d[1] for d in offs) == list(range(60, 67))


def test_watchdog_releases_a_stuck_note():
    clock = FakeClock(jitter=0.0)
    out = FakeOutput()
    sched = LookaheadScheduler(out, clock=clock, max_note_seconds=2.0, port_check_interval=0)
    sched.submit([note_on(0.0, 61, 100), note_on(0.1, 64, 100), note_off(0.5, 64)])  # 61 is never released
    sched.start()
    deadline = time.monotonic() + 5
    while sched.telemetry().watchdog_releases == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    tel = sched.telemetry()
    sched.stop(panic=False)
    assert tel.watchdog_releases == 1 and tel.notes_sounding == 0
    assert out.sent[:4] == [(0x90, 61, 100), (0x90, 64, 100), (0x80, 64, 0), (0x80, 61, 0)]


def test_late_events_count_as_underruns_and_shift_the_timeline_instead_of_bunching():
    clock = FakeClock(jitter=0.0, limit=1000.0 + 0.05 + 0.2)
    out = FakeOutput()
    sched = LookaheadScheduler(out, clock=clock, record=True, port_check_interval=0)
    sched.start()
    sched.submit([note_on(0.0, 60, 80), note_off(0.1, 60)])
    deadline = time.monotonic() + 5
    while len(sched.sent_log) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    with clock.lock:
        clock.t += 1.0  # the model stalls for a second: the next note is already late when it arrives
        clock.limit = float("inf")
    sched.submit([note_on(0.2, 62, 80), note_off(0.3, 62)])
    sched.finish()
    assert sched.wait_done(5)
    tel = sched.telemetry()
    sched.stop()
    assert tel.underruns == 1
    (t_on, _, _), (t_off, _, _) = sched.sent_log[2:4]
    assert t_off - t_on == pytest.approx(0.1)  # the late note keeps its length
    assert tel.lateness_max_ms < 1.0
    assert tel.falling_behind is False


def test_port_loss_is_reported_pauses_keeps_the_queue_and_reconnect_resumes():
    out = FakeOutput()
    reports: list[str] = []
    sched = LookaheadScheduler(out, lookahead=0.5, port_check_interval=0.02, on_port_lost=reports.append)
    sched.start()
    sched.submit(phrase(40, step=0.01, length=0.005))
    time.sleep(0.12)
    out.alive = False
    deadline = time.monotonic() + 3
    while not reports and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reports and "disappeared" in reports[0]
    assert sched.telemetry().port_state == "lost"
    left = sched.telemetry().events_queued
    assert left > 0  # the rest of the phrase is kept, not thrown away
    sched.reconnect()
    sched.finish()
    assert sched.wait_done(5)
    sched.stop()
    assert out.reopened == 1 and sched.telemetry().events_sent == 80
    assert unreleased(out.sent) == 0


def test_written_file_holds_exactly_the_events(tmp_path):
    events = phrase(30, step=0.125, length=0.25) + [control_change(0.5, 64, 127), control_change(1.5, 64, 0)]
    path = write_midi_file(events, tmp_path / "out.mid")
    midi = mido.MidiFile(path)
    t, got = 0.0, []
    for msg in midi:
        t += msg.time
        if not msg.is_meta:
            got.append((round(t, 4), tuple(msg.bytes())))
    assert got == [(round(e.time, 4), e.data) for e in sorted(events)]


def panic_tail_ok(sent: list[tuple[int, ...]]) -> bool:
    """The last 32 messages are sustain off and All Notes Off on all 16 channels."""
    tail = sent[-32:]
    return {(d[0] & 0x0F, d[1], d[2]) for d in tail if d[0] & 0xF0 == 0xB0} == {(ch, cc, 0) for ch in range(16) for cc in (64, 123)}


def held_chord() -> list[MidiEvent]:
    events = [control_change(0.0, 64, 127)]
    for i in range(6):
        events += [note_on(i * 0.05, 60 + i, 90), note_off(i * 0.05 + 1.0, 60 + i)]
    return events


def wait_for_sounding(sched: LookaheadScheduler, n: int) -> None:
    deadline = time.monotonic() + 5
    while sched.telemetry().notes_sounding < n and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sched.telemetry().notes_sounding == n


def test_pause_releases_every_note_keeps_the_queue_and_resume_plays_the_rest():
    clock = FakeClock(jitter=0.0, limit=1000.0 + 0.05 + 0.3)  # time stops 0.3 s into the music
    out = FakeOutput()
    sched = LookaheadScheduler(out, clock=clock, port_check_interval=0)
    sched.submit(held_chord())
    sched.start()
    wait_for_sounding(sched, 6)
    sched.pause()
    assert sched.telemetry().port_state == "paused"
    assert unreleased(out.sent) == 0 and panic_tail_ok(out.sent)
    assert sched.telemetry().events_queued == 6  # the note-offs still to come are kept
    sent_while_paused = len(out.sent)
    with clock.lock:
        clock.limit = float("inf")
    sched.resume()
    sched.finish()
    assert sched.wait_done(5)
    sched.stop(panic=False)
    assert len(out.sent) == sent_while_paused + 6 and all(d[0] & 0xF0 == 0x80 for d in out.sent[-6:])


def test_an_error_while_playing_still_releases_every_note():
    clock = FakeClock(jitter=0.0, limit=1000.0 + 0.05 + 0.3)
    out = FakeOutput()
    with pytest.raises(RuntimeError, match="the model broke"):
        with LookaheadScheduler(out, clock=clock, port_check_interval=0) as sched:
            sched.submit(held_chord())
            wait_for_sounding(sched, 6)
            raise RuntimeError("the model broke")
    assert unreleased(out.sent) == 0 and panic_tail_ok(out.sent)
    assert sched.telemetry().port_state == "stopped"

"""engine.midi.player.LivePlayer: the one live player both faces call (pre-roll, back-pressure, drain,
port loss and reconnect, stop, take names); one set of generation defaults for both faces."""
from __future__ import annotations

import threading
import time

import pytest
from midi_helpers import FakeOutput, FastClock

from engine.midi import LivePlayer, LookaheadScheduler, NoteTracker, OutputChoice, PortError, note_off, note_on, take_paths


def _chunks(n: int, step: float = 0.1, pulled: list | None = None):
    """n chunks, one note each; ``pulled`` records the music time at which each chunk was asked for."""
    for i in range(n):
        if pulled is not None:
            pulled.append(i)
        t = i * step
        yield [note_on(t, 60 + i % 12, 80), note_off(t + step * 0.9, 60 + i % 12)], t + step, 1


def _player(out, speed=50.0, lookahead=0.3, **kwargs):
    sched = LookaheadScheduler(out, lookahead=lookahead, clock=FastClock(speed), port_check_interval=0.01, realtime=False,
                               on_port_lost=None)
    player = LivePlayer(scheduler=sched, **kwargs)
    sched.on_port_lost = player._port_lost
    return player, sched


def test_plays_every_chunk_in_order_drains_and_leaves_nothing_sounding():
    out = FakeOutput()
    player, sched = _player(out)
    assert player.play(_chunks(40)) == "finished"
    notes = [d for d in out.sent if d[0] & 0xF0 == 0x90]
    assert [d[1] for d in notes] == [60 + i % 12 for i in range(40)]
    tracker = NoteTracker()
    for d in out.sent:
        tracker.observe(d, 0.0)
    assert tracker.count == 0 and len(player.take()) == 80
    player.close()
    player.close()  # idempotent


def test_back_pressure_keeps_the_source_no_further_ahead_than_the_lookahead():
    out = FakeOutput()
    pulled: list[int] = []
    player, sched = _player(out, speed=5.0, lookahead=0.3)
    ahead = []

    def watched():
        for item in _chunks(30, pulled=pulled):
            ahead.append(item[1] - sched.music_time())
            yield item

    assert player.play(watched()) == "finished"
    # pre-roll fills one lookahead before the clock starts; after that the source waits for room
    assert max(ahead[5:]) <= 0.3 + 0.1 + 0.05, max(ahead)
    player.close()


def test_stop_from_another_thread_ends_the_take_at_once_and_releases_notes():
    out = FakeOutput()
    player, sched = _player(out, speed=1.0, lookahead=0.2)
    threading.Timer(0.3, player.stop).start()
    started = time.monotonic()
    assert player.play(_chunks(10_000, step=0.05)) == "stopped"
    assert time.monotonic() - started < 3
    player.close()
    tracker = NoteTracker()
    for d in out.sent:
        tracker.observe(d, 0.0)
    assert tracker.count == 0


def test_a_lost_port_is_told_and_reconnected_and_the_take_goes_on():
    out = FakeOutput()
    notices = []
    player, sched = _player(out, speed=2.0, lookahead=0.2, on_notice=notices.append)

    def source():
        for i, item in enumerate(_chunks(30, step=0.05)):
            if i == 10:
                out.alive = False  # the synth quits; reopen() brings it back
            yield item

    assert player.play(source()) == "finished"
    kinds = [n.kind for n in notices]
    assert "port lost" in kinds and "reconnected" in kinds, notices
    assert "reconnects by itself" in notices[kinds.index("port lost")].text
    assert out.reopened >= 1 and sum(d[0] & 0xF0 == 0x90 for d in out.sent) >= 20
    player.close()


def test_a_port_that_never_comes_back_ends_the_take_with_port_lost():
    class Gone(FakeOutput):
        def reopen(self) -> None:
            raise PortError("still gone")

    out = Gone()
    notices = []
    player, sched = _player(out, speed=2.0, lookahead=0.2, on_notice=notices.append, reconnect_wait=0.3)

    def source():
        for i, item in enumerate(_chunks(200, step=0.05)):
            if i == 5:
                out.alive = False
            yield item

    assert player.play(source()) == "port lost"
    assert [n.kind for n in notices][-1] == "port gone"
    player.close()


def test_take_paths_name_one_file_or_one_per_alternative(tmp_path, monkeypatch):
    assert take_paths(tmp_path / "x.mid", 1, 3) == [tmp_path / "x.mid"]
    assert [p.name for p in take_paths(tmp_path / "x", 2, 3)] == ["x-1.mid", "x-2.mid"]
    monkeypatch.chdir(tmp_path)
    assert take_paths(None, 1, 3)[0].name == "pianomuse-seed3.mid"  # the number is the seed, said so
    (tmp_path / "pianomuse-seed3.mid").write_bytes(b"")
    assert take_paths(None, 1, 3)[0].name == "pianomuse-seed3-take2.mid"  # never overwrites an earlier take
    assert [p.name for p in take_paths(None, 2, 3)] == ["pianomuse-seed3-take2-1.mid", "pianomuse-seed3-take2-2.mid"]


@pytest.mark.parametrize("choice, words", [
    (OutputChoice(synth="organ"), "unknown synth"),
    (OutputChoice(port="x", virtual=True), "not both"),
    (OutputChoice(lookahead=0), "positive"),
])
def test_a_bad_output_choice_is_one_sentence_before_anything_opens(choice, words):
    assert words in choice.problem()
    with pytest.raises(PortError, match="(?i)" + words):
        LivePlayer(choice).open()


def test_both_faces_start_from_the_engine_generation_defaults():
    """The app's knobs and the command's options were 0.9/0.92/16 and 1.0/0.95/8 bars; now one set."""
    from typer.testing import CliRunner

    from engine.generate import DEFAULT_BARS, SamplingConfig
    from pianomuse_tui.cli import app
    from engine.generate.performance import Knobs

    defaults = SamplingConfig()
    knobs = Knobs()
    assert (knobs.temperature, knobs.top_p, knobs.bars) == (defaults.temperature, defaults.top_p, DEFAULT_BARS)
    text = " ".join(CliRunner().invoke(app, ["--headless", "generate", "--help"], env={"COLUMNS": "200"}).output.split())
    assert f"default {DEFAULT_BARS} when" in text


def test_the_app_does_not_import_the_headless_command_modules():
    """The app used to import the CLI's generate module (for file names), closing an import cycle."""
    import subprocess
    import sys

    code = "import sys, engine.generate.performance, pianomuse_tui.panes.generate; print('generate_cmd' in ' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr[-500:]


def test_the_timing_panel_reads_a_typed_telemetry_record():
    """The Generate pane's Timing panel gets the engine's SchedulerTelemetry (and the duet's timing)
    as a typed record, not a dict it has to guess keys in."""
    from engine.midi.scheduler import SchedulerTelemetry
    from engine.generate.performance import Knobs, Performance, PerformanceSettings, PerformanceTelemetry

    performance = Performance(PerformanceSettings(checkpoint=None), Knobs())
    assert performance.telemetry() is None  # nothing opened yet: the panel says "not playing"
    performance.player.scheduler = LookaheadScheduler(FakeOutput(), clock=FastClock(1.0), realtime=False)
    telemetry = performance.telemetry()
    assert isinstance(telemetry, PerformanceTelemetry) and isinstance(telemetry.scheduler, SchedulerTelemetry)
    assert telemetry.duet is None and telemetry.scheduler.port_state == "ok"


def _listening_player():
    """A player for a listening source, and the event that says the pianist played."""
    sched = LookaheadScheduler(FakeOutput(), lookahead=0.3, port_check_interval=0, realtime=False)
    return sched, LivePlayer(scheduler=sched), threading.Event()


def test_a_source_with_something_pending_is_pulled_even_with_the_lookahead_full():
    """A listening source (a duet) says it has input to react to: the player pulls it then, while
    seconds of music are still buffered, instead of waiting for room."""
    sched, player, key = _listening_player()
    buffered_when_pulled: list[float] = []

    def listening_source():
        threading.Timer(0.2, key.set).start()  # the pianist plays 0.2 s in
        yield [note_on(0.0, 60, 80), note_off(4.0, 60)], 5.0, 1  # five seconds ahead: the lookahead is full
        buffered_when_pulled.append(sched.buffered_seconds())
        key.clear()
        player.stop()
        yield [], 5.0, 0

    assert player.play(listening_source(), pending=key.is_set) == "stopped"
    player.close()
    assert buffered_when_pulled[-1] > 4.0  # pulled at the key, with over 4 s of music still ahead


def test_after_a_take_back_the_source_is_pulled_again_at_once():
    """The music a source had generated past a take-back is void: the player asks it for more at once
    (a duet's first note after the next handover), not once the void music would have played out."""
    sched, player, key = _listening_player()
    waited: list[float] = []

    def listening_source():
        threading.Timer(0.2, key.set).start()  # the pianist plays 0.2 s in
        yield [note_on(0.0, 60, 80), note_off(4.0, 60)], 5.0, 1  # five seconds generated ahead
        key.clear()
        cut = sched.music_time()
        player.take_back(0, cut, cut, player.take())  # the pianist has the floor: the rest is void
        yield [], cut + 0.05, 1  # the next handover's first token: 50 ms of music decided
        waited.append(sched.music_time() - cut)
        player.stop()
        yield [], cut + 0.05, 0

    assert player.play(listening_source(), pending=key.is_set) == "stopped"
    player.close()
    assert waited and waited[0] < 0.1, waited  # not the 4.5 s the void music would have taken

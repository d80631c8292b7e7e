"""engine.generate.duet without a MIDI system: a tiny model, a queue as the input, a recording output."""
from __future__ import annotations

import queue
from dataclasses import replace
import threading
import time

import pytest
import torch
from midi_helpers import FakeOutput

from engine.generate.defaults import KnobSettings, SamplingConfig
from engine.data.tokenizer import PianoTokenizer
from engine.generate.duet import HUMAN_CHANNEL, Duet, DuetConfig
from engine.generate.live import build_session
from engine.midi import LivePlayer, LookaheadScheduler, NoteTracker
from engine.model import RWKV7, ModelConfig


def _tiny_model(tok: PianoTokenizer):
    torch.manual_seed(0)
    return RWKV7(ModelConfig(n_layer=1, n_embd=64, head_size=32, vocab_size=tok.vocab_size)).eval(), tok


@pytest.fixture(scope="module")
def tiny():
    return _tiny_model(PianoTokenizer("REMI"))


@pytest.fixture(scope="module")
def tiny_brisk():
    """A random model whose vocabulary has only brisk tempos (200 and 250 qpm): whatever Tempo token it
    draws, a bar lasts under 2 s, so it steps (and reads the knobs) within seconds. With the default
    40-250 range it could write 40 qpm and rest a 6 s bar or more before its next step."""
    return _tiny_model(PianoTokenizer("REMI", {"tempo_range": [200, 250], "num_tempos": 2}))


def _rig(tiny, seed: int = 0, **config):
    model, tok = tiny
    out = FakeOutput()
    sched = LookaheadScheduler(out, lookahead=0.2, port_check_interval=0, realtime=False)
    player = LivePlayer(scheduler=sched)
    messages: queue.Queue = queue.Queue()
    knobs = [KnobSettings(temperature=1.0, top_p=0.95)]  # what the pane's Knobs.snapshot() hands over
    session = build_session(model, tok, sampling=SamplingConfig(temperature=1.0, top_p=0.95, seed=seed))
    duet = Duet(session, DuetConfig(**config), player, messages, knobs=lambda: knobs[0])
    return out, player, messages, duet, knobs


def _run(player, duet, script) -> None:
    thread = threading.Thread(target=script, daemon=True)
    thread.start()
    duet.play()
    thread.join(10)
    player.close()


@pytest.mark.slow
def test_a_key_held_through_the_handover_still_sounds_its_release_and_the_knobs_reach_the_model(tiny_brisk):
    out, player, messages, duet, knobs = _rig(tiny_brisk, mode="continue", pause=0.3, tempo=240)  # short bars: a random model rests less
    press = lambda data: messages.put((time.monotonic(), data))  # noqa: E731

    def until(condition, timeout: float = 10.0) -> None:  # the test waits on the duet, not on a guess of its speed
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)

    def pianist() -> None:
        time.sleep(0.2)
        press((0x90, 60, 80))
        time.sleep(0.1)
        press((0x80, 60, 0))
        press((0xB0, 67, 127))  # the takeover CC: the model plays
        until(lambda: duet.handovers and duet.handovers[0].first_note is not None)
        time.sleep(0.2)
        press((0x90, 48, 70))  # you play again: it stops; then the CC again while C3 is still down
        until(lambda: duet.takebacks)
        press((0xB0, 67, 127))
        until(lambda: len(duet.handovers) == 2)
        time.sleep(0.6)
        knobs[0] = replace(knobs[0], temperature=0.0, version=1)  # turned while the model plays
        time.sleep(0.3)
        press((0x80, 48, 0))
        until(lambda: duet.session.sampling.temperature == 0.0)  # read before its next step (it may rest a bar)
        player.stop()

    _run(player, duet, pianist)
    assert duet.handovers and duet.handovers[0].reason == "cc"
    assert duet.session.sampling.temperature == 0.0, (duet.handovers, duet.takebacks, duet.row.decoder.horizon, duet.model_has_floor)
    # pressing a key took the floor back: what the model had generated past that moment left its
    # state, so the sequence stands no later than the cut and your next notes go in at their time
    assert duet.takebacks and all(after <= cut + 1e-6 for cut, after in duet.takebacks), (duet.takebacks, duet.handovers, [(round(e.time, 2), e.data) for e in duet.take.human])
    tracker = NoteTracker()
    for data in out.sent:
        tracker.observe(data, 0.0)
    assert tracker.count == 0  # the held key's release went through after the handover
    held = [e for e in duet.take.human if e.data[1] == 48]
    assert [e.is_note_on for e in held] == [True, False] and all(e.channel == HUMAN_CHANNEL for e in held)


def test_accompany_draws_only_below_the_split(tiny):
    out, player, messages, duet, _ = _rig(tiny, mode="accompany", split=55)

    def pianist() -> None:
        deadline = time.monotonic() + 15  # a random model may rest for bars before a note
        while sum(e.is_note_on for e in duet.take.model) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        player.stop()

    _run(player, duet, pianist)
    pitches = [e.data[1] for e in duet.take.model if e.is_note_on]
    assert pitches and max(pitches) < 55


@pytest.mark.slow
def test_four_taps_set_the_tempo_and_the_first_bar_line(tiny):
    out, player, messages, duet, _ = _rig(tiny, mode="continue", pause=0.4, tap_tempo=True)
    press = lambda data: messages.put((time.monotonic(), data))  # noqa: E731
    beat = 0.4  # 150 quarter notes per minute

    def pianist() -> None:
        time.sleep(0.3)
        start = time.monotonic()
        for k in range(4):
            time.sleep(max(0.0, start + k * beat - time.monotonic()))
            press((0x90, 36, 60))
            press((0x80, 36, 0))
        # one beat after the first bar line (which falls a beat after the fourth tap)
        time.sleep(max(0.0, start + 5 * beat - time.monotonic()))
        press((0x90, 60, 80))
        time.sleep(0.1)
        press((0x80, 60, 0))
        deadline = time.monotonic() + 10
        while not duet.handovers and time.monotonic() < deadline:
            time.sleep(0.02)
        player.stop()

    _run(player, duet, pianist)
    qpm = duet.timeline.tempos[0][1]
    assert abs(qpm - 150) < 6  # the tokenizer's nearest tempo to the taps'
    assert duet.t0 == pytest.approx(duet.taps[-1] + beat, abs=0.03)
    assert not [e for e in duet.take.human if e.data[1] == 36]  # taps are not music
    tables = duet.session.tables
    forced = duet.session.forced
    pitch_at = forced.index(next(i for i in forced if tables.kind[i] == "Pitch" and int(tables.value[i]) == 60))
    position = next(int(tables.value[i]) for i in reversed(forced[:pitch_at]) if tables.kind[i] == "Position")
    per_beat = tables.tpb_per_ts[4] // tables.ticks_per_pos(tables.tpb_per_ts[4])
    assert abs(position - per_beat) <= 1  # on beat 2 of the first bar



class _SlowMachine:
    """The tiny model on a slower machine: every RNN step also costs ``delay`` seconds of wall time
    (a sleep, as a slower CPU's step would take), which the session measures like any other cost."""

    def __init__(self, model, delay: float) -> None:
        self.model, self.delay = model, delay

    def step(self, *args, **kwargs):
        time.sleep(self.delay)
        return self.model.step(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def _takeover_and_stop_at_the_first_note(duet, player, press) -> None:
    press((0xB0, 67, 127))
    deadline = time.monotonic() + 10
    while not (duet.handovers and duet.handovers[0].first_note is not None) and time.monotonic() < deadline:
        time.sleep(0.01)
    sched = player.scheduler
    while time.monotonic() < deadline and duet.handovers and not any(  # the first note has left, not just been drawn
            data[0] == 0x90 and data[2] > 0 and target >= sched._origin + duet.handovers[0].first_note - 1e-6
            for target, _, data in list(sched.sent_log)):
        time.sleep(0.005)
    player.stop()


def _handover_on_a_slow_machine(tiny_brisk, delay: float, delay_at_cc: float, **config):
    """One note, then the takeover CC; the model's step costs ``delay`` s, from the CC on ``delay_at_cc`` s.
    Returns the handover, when its first note left the scheduler (monotonic) and the clock origin."""
    model, tok = tiny_brisk
    slow = _SlowMachine(model, delay)
    out, player, messages, duet, _ = _rig((slow, tok), mode="continue", pause=5.0, tempo=240, **config)
    player.scheduler.record = True
    press = lambda data: messages.put((time.monotonic(), data))  # noqa: E731

    def pianist() -> None:
        time.sleep(0.3)
        press((0x90, 60, 80))
        time.sleep(0.1)
        press((0x80, 60, 0))
        time.sleep(0.3)  # the note is fed (four tokens at the slow machine's cost)
        slow.delay = delay_at_cc
        _takeover_and_stop_at_the_first_note(duet, player, press)

    _run(player, duet, pianist)
    sched = player.scheduler
    assert len(duet.handovers) == 1 and duet.handovers[0].first_note is not None, duet.handovers
    handover = duet.handovers[0]
    sent = next(s for target, s, data in sched.sent_log
                if data[0] == 0x90 and data[2] > 0 and target >= sched._origin + handover.first_note - 1e-6)
    return duet, handover, sent, sched._origin


@pytest.mark.slow
def test_on_a_slow_machine_the_first_note_after_a_handover_waits_for_a_grid_step_it_can_meet(tiny_brisk):
    """Each token costs 25 ms: the first note needs a Position token and its Pitch and Velocity
    (75 ms or more), far past ``lead`` (30 ms) and the next 30 ms grid step. It is placed
    on a later grid step the model can meet and leaves on time, instead of going out late."""
    duet, handover, sent, origin = _handover_on_a_slow_machine(tiny_brisk, 0.025, 0.025, lead=0.03)
    assert handover.reason == "cc"
    assert sent - (origin + handover.first_note) < 0.015  # it left when it was due, not late
    assert handover.late < 0.015 and handover.latency == pytest.approx(sent - (origin + handover.at), abs=0.015)
    assert handover.first_note - handover.at >= 0.03  # never sooner than the lead
    timeline, encoder = duet.timeline, duet.encoder
    tick = encoder.tick_at(timeline, duet._seq(handover.first_note))
    assert tick % encoder.grid(timeline) == 0  # on the grid: the first step at or after the earliest it could meet
    grid = timeline.seconds(encoder.grid(timeline)) - timeline.seconds(0)
    assert handover.earliest - handover.at >= 3 * 0.025 and handover.drawn == 2 and handover.earliest <= handover.first_note < handover.earliest + grid


@pytest.mark.slow
def test_by_default_the_measured_cost_alone_decides_how_soon_the_first_note_comes(tiny_brisk):
    """No ``lead`` given: on a fast machine (the tiny model's tokens take well under a millisecond) the
    first note may come sooner than the 30 ms the lead used to be: on the first grid step at or after
    the time its tokens need, and on time."""
    duet, handover, sent, origin = _handover_on_a_slow_machine(tiny_brisk, 0.0, 0.0)
    assert handover.earliest - handover.at < 0.03  # the measured cost, not a 30 ms floor
    assert DuetConfig().lead == 0.0
    assert handover.drawn == 2  # the note-on left with its Velocity: Pitch and Velocity drawn, not its Duration yet
    assert sent - (origin + handover.first_note) < 0.015 and handover.late < 0.015
    timeline, encoder = duet.timeline, duet.encoder
    assert encoder.tick_at(timeline, duet._seq(handover.first_note)) % encoder.grid(timeline) == 0
    grid = timeline.seconds(encoder.grid(timeline)) - timeline.seconds(0)
    assert handover.earliest <= handover.first_note < handover.earliest + grid


def test_a_take_back_just_after_a_note_struck_at_its_velocity_keeps_that_note_in_the_state(tiny_brisk):
    """The first note-on leaves with its Velocity; you play again after it sounded but before its
    Duration was drawn: the model draws its Duration first, so its state keeps the note it played
    (and the note ends where the model wrote it), as for any note that sounded before a take-back."""
    out, player, messages, duet, _ = _rig(tiny_brisk, mode="continue", pause=5.0, tempo=240)
    session, kinds = duet.session, duet.session.tables.kind
    duet._give_floor_to_model(0.0, "cc")
    while duet.timeline.note_stage != 2:  # draw up to the first note's Velocity
        duet._mark(0.0)
        duet._model_events(session.step().events[0])
    onset = duet.handovers[-1].first_note
    assert onset is not None and [e.data[1] for e in duet.take.model if e.is_note_on] == [duet.timeline._pitch]
    duet._take_floor_back(onset + 0.01)
    tokens = session.rows[0].tokens
    assert [kinds[t] for t in tokens[-3:]] == ["Pitch", "Velocity", "Duration"]  # the note stayed in the state
    note = duet.row.decoder.notes[-1]
    assert duet.row.decoder._time(note.onset) == pytest.approx(onset) and duet.timeline.note_stage == 0
    assert sum(e.is_note_off for e in duet.take.model) == 1
    player.close()


@pytest.mark.slow
def test_a_first_note_that_still_comes_late_is_reported_late(tiny_brisk):
    """The machine turns slow at the very handover (a token takes 150 ms from the CC on, after 0 ms
    before): the first note cannot be on time, and the handover's latency says when it really left."""
    duet, handover, sent, origin = _handover_on_a_slow_machine(tiny_brisk, 0.0, 0.15, lead=0.03)
    assert handover.late > 0.2
    assert handover.latency == pytest.approx(sent - (origin + handover.at), abs=0.015)
    assert duet.latencies() == [handover.latency]



@pytest.mark.slow
def test_while_you_rest_the_bar_lines_go_into_the_state_so_a_handover_feeds_only_its_position(tiny_brisk):
    out, player, messages, duet, _ = _rig(tiny_brisk, mode="continue", pause=5.0, tempo=240)
    press = lambda data: messages.put((time.monotonic(), data))  # noqa: E731
    sched, kinds = player.scheduler, duet.session.tables.kind
    seen: dict[str, object] = {}

    def bars_fed() -> int:
        forced = list(duet.session.forced)
        last_note = max(i for i, t in enumerate(forced) if kinds[t] == "Duration")
        return sum(kinds[t] == "Bar" for t in forced[last_note:])

    def pianist() -> None:
        time.sleep(0.3)
        press((0x90, 60, 80))
        time.sleep(0.1)
        press((0x80, 60, 0))
        bar = duet.seconds_per_bar
        onset_bar = int((sched.music_time() - duet.t0) // bar)
        while (sched.music_time() - duet.t0) < (onset_bar + 2.5) * bar:  # rest to the middle of the bar after next
            time.sleep(0.01)
        time.sleep(0.1)
        seen["bars"], seen["passed"] = bars_fed(), int((sched.music_time() - duet.t0) // bar) - onset_bar
        seen["forced"] = len(duet.session.forced)
        _takeover_and_stop_at_the_first_note(duet, player, press)

    _run(player, duet, pianist)
    assert seen["passed"] == 2 and seen["bars"] == 2  # both bar lines were in the state before the CC
    assert [kinds[t] for t in duet.session.forced[seen["forced"]:]] == ["Position"]  # all the handover fed
    assert duet.handovers and duet.handovers[0].first_note is not None


# ---- the take-back: how the model's held notes end -------------------------------------------------

def _model_part():
    """A model part on channel 0: C4 0.0-0.9, E4 0.2-3.5 (its note-off made), G4 from 0.4 (its
    note-off not made yet: written to end at 1.2), A4 1.1-1.3 (after the cut: dropped), pedal down
    at 0.1 and up at 1.4."""
    from engine.midi.events import CC_SUSTAIN, control_change, note_off, note_on

    return [note_on(0.0, 60, 80), control_change(0.1, CC_SUSTAIN, 127), note_on(0.2, 64, 70), note_on(0.4, 67, 70),
            note_off(0.9, 60), note_on(1.1, 69, 60), note_off(1.3, 69), control_change(1.4, CC_SUSTAIN, 0),
            note_off(3.5, 64)]


def _ends(releases):
    from engine.midi.events import CC_SUSTAIN

    notes = {e.data[1]: round(e.time, 6) for e in releases if e.is_note_off}
    pedal = [round(e.time, 6) for e in releases if e.status == 0xB0 and e.data[1] == CC_SUSTAIN and e.data[2] < 64]
    return notes, pedal


def test_finish_ends_each_held_note_where_the_model_wrote_it_capped_and_the_pedal_at_its_own_lift():
    from engine.midi.events import held_note_releases, note_off, note_on

    releases = held_note_releases(_model_part(), cut=0.5, latest=2.5, ends={(0, 67): 1.2})
    # C4 ends at its note-off, G4 where it was written to end, E4 (3.5) at the cap 0.5 + 2.0; A4 never started
    assert _ends(releases) == ({60: 0.9, 67: 1.2, 64: 2.5}, [1.4])
    assert [e.time for e in releases] == sorted(e.time for e in releases)
    # a re-strike of E4 at 1.0 (made, now dropped) does not end it early when its written end is known
    restruck = _model_part() + [note_off(1.0, 64), note_on(1.0, 64, 70)]
    assert _ends(held_note_releases(restruck, 0.5, 2.5, {(0, 67): 1.2}))[0][64] == 1.0
    assert _ends(held_note_releases(restruck, 0.5, 2.5, {(0, 67): 1.2, (0, 64): 3.5}))[0][64] == 2.5


def test_finish_lifts_the_pedal_at_the_cut_when_the_model_has_not_lifted_it_within_the_limit():
    from engine.midi.events import held_note_releases

    releases = held_note_releases(_model_part(), cut=0.5, latest=1.1, ends={(0, 67): 1.2})
    assert _ends(releases) == ({60: 0.9, 67: 1.1, 64: 1.1}, [0.5])  # the pedal-up at 1.4 is past 1.1
    no_lift = [e for e in _model_part() if not (e.status == 0xB0 and e.data[2] == 0)]
    assert _ends(held_note_releases(no_lift, 0.5, 2.5, {(0, 67): 1.2}))[1] == [0.5]


def test_release_ends_every_held_note_and_the_pedal_at_the_cut_and_nothing_is_left_sounding():
    from engine.midi.events import held_note_releases

    part = _model_part()
    for latest in (0.5, 2.5):  # release, finish
        releases = held_note_releases(part, 0.5, latest, {(0, 67): 1.2})
        if latest == 0.5:
            assert _ends(releases) == ({60: 0.5, 64: 0.5, 67: 0.5}, [0.5])
        tracker = NoteTracker()
        for event in sorted([e for e in part if e.time < 0.5] + releases, key=lambda e: (e.time, e.order)):
            tracker.observe(event.data, event.time)
        assert tracker.count == 0 and not tracker.sustain_down
    assert held_note_releases([], 0.5, 2.5) == []  # nothing sounding, nothing to end


def test_both_faces_build_the_duet_settings_the_same_way_with_one_sentence_per_bad_value():
    from engine.generate.defaults import DuetConfig, duet_config, tempo_from_taps

    # the pane's text fields and the command line's typed values give the same settings
    typed = duet_config(mode="call-and-response", turn_bars=1, count_in=2, click=False, tempo=96.0, takeback="release")
    text = duet_config(mode="call-and-response", turn_bars="1", count_in=" 2", click=False, tempo="96", takeback="release")
    assert typed == text and typed.turn_bars == 1 and typed.tempo == 96.0
    bad = {"pause": ("x", "the pause must be a number, e.g. 1.0; got 'x'"),
           "turn_bars": ("1.5", "the turn bars must be a whole number, e.g. 2; got '1.5'"),
           "tempo": ("400", "the tempo must be between 20 and 300 quarter notes per minute"),
           "split": ("200", "the split point must be a MIDI pitch 0-127 (60 = middle C)"),
           "takeback": ("fade", "unknown takeback 'fade'; use one of: finish, release"),
           "lead": ("-0.1", "the lead must be between 0 and 1 second, e.g. 0.03")}
    for name, (value, sentence) in bad.items():
        with pytest.raises(ValueError) as err:
            duet_config(**{name: value})
        assert str(err.value) == sentence
    # each knob says which modes use it: the pane shows it there, --help says so
    assert DuetConfig.knobs("accompany") == ["tempo", "tap_tempo", "split", "lead", "thru"]
    assert "takeback" in DuetConfig.knobs("continue") and "takeback" in DuetConfig.knobs("call-and-response")
    assert DuetConfig.help("split").startswith("With --mode accompany: ")
    # tapping: the median spacing is the beat, one stray tap does not move it
    assert tempo_from_taps([0.0]) is None
    assert tempo_from_taps([0.0, 0.5, 1.0, 1.5]) == pytest.approx(120.0)
    assert tempo_from_taps([0.0, 0.5, 1.3, 1.8, 2.3]) == pytest.approx(120.0)
    assert tempo_from_taps([0.0, 10.0]) == pytest.approx(20.0)  # kept within 20-300

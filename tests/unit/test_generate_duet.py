"""engine.generate.duet without a MIDI system: a tiny model, a queue as the input, a recording output."""
from __future__ import annotations

import queue
import threading
import time

import pytest
import torch
from midi_helpers import FakeOutput

from engine.data.tokenizer import PianoTokenizer
from engine.generate.duet import HUMAN_CHANNEL, Duet, DuetConfig
from engine.generate.live import build_session
from engine.midi import LivePlayer, LookaheadScheduler, NoteTracker
from engine.model import RWKV7, ModelConfig


@pytest.fixture(scope="module")
def tiny():
    tok = PianoTokenizer("REMI")
    torch.manual_seed(0)
    return RWKV7(ModelConfig(n_layer=1, n_embd=64, head_size=32, vocab_size=tok.vocab_size)).eval(), tok


def _rig(tiny, **config):
    model, tok = tiny
    out = FakeOutput()
    sched = LookaheadScheduler(out, lookahead=0.2, port_check_interval=0, realtime=False)
    player = LivePlayer(scheduler=sched)
    messages: queue.Queue = queue.Queue()
    knobs = {"temperature": 1.0, "top_p": 0.95, "version": 0}
    duet = Duet(build_session(model, tok), DuetConfig(**config), player, messages, knobs=lambda: dict(knobs))
    return out, player, messages, duet, knobs


def _run(player, duet, script) -> None:
    thread = threading.Thread(target=script, daemon=True)
    thread.start()
    player.play(duet.chunks())
    thread.join(10)
    player.close()


@pytest.mark.slow
def test_a_key_held_through_the_handover_still_sounds_its_release_and_the_knobs_reach_the_model(tiny):
    out, player, messages, duet, knobs = _rig(tiny, mode="continue", pause=0.3, tempo=240)  # short bars: a random model rests less
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
        knobs.update(temperature=0.0, version=1)  # turned while the model plays
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

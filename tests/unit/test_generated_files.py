"""Files written from generated tokens: tempo map and time signatures, bar lines, overlapping
same-pitch notes (files and the live stream), and a take saved mid-performance."""
from __future__ import annotations

import pytest
import symusic

from engine.data.tokenizer import PianoTokenizer
from engine.generate import StreamDecoder, TokenTables
from engine.generate.timeline import MERGE, RESTRIKE, STRIKE, Note, same_pitch_rule, sounding_notes
from engine.midi import NoteTracker
from engine.midi.events import CC_SUSTAIN, MidiEvent, control_change, note_off, note_on, take_until, write_midi_file


@pytest.fixture(scope="module", params=["REMI", "TSD"])
def tokenizer(request):
    return PianoTokenizer(request.param)


def metre_and_tempo_change() -> symusic.Score:
    """Two bars of 4/4 at 120 qpm, then three bars of 3/4 at 80 qpm; the music starts on beat 2."""
    score = symusic.Score(480)
    score.tempos.append(symusic.Tempo(0, 120.0))
    score.tempos.append(symusic.Tempo(3840, 80.0))
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    score.time_signatures.append(symusic.TimeSignature(3840, 3, 4))
    track = symusic.Track("piano", 0, False)
    for beat in range(1, 17):
        track.notes.append(symusic.Note(beat * 480, 400, 60 + beat % 7, 80))
    score.tracks.append(track)
    return score


def stream_and_write(tok, ids, path):
    decoder = StreamDecoder(TokenTables(tok))
    for token in ids:
        decoder.feed(token)
    decoder.finish()
    return decoder, write_midi_file(decoder.events, path, meter=decoder.meter())


def test_the_file_has_the_tempo_map_time_signatures_and_bar_lines_the_tokens_say(tokenizer, tmp_path):
    ids = tokenizer.encode_score(metre_and_tempo_change())
    _, path = stream_and_write(tokenizer, ids, tmp_path / "take.mid")
    expected = tokenizer.decode(ids).resample(480)  # what the tokens say, on the file's grid
    written = symusic.Score(str(path))
    assert written.ticks_per_quarter == 480
    assert [(t.time, round(t.qpm, 1)) for t in written.tempos] == [(t.time, round(t.qpm, 1)) for t in expected.tempos]
    assert len(written.tempos) == 2 and abs(written.tempos[1].qpm - 80) < 4  # MidiTok's nearest tempo bin
    assert [(s.time, s.numerator, s.denominator) for s in written.time_signatures] == [(0, 4, 4), (3840, 3, 4)]
    # the first note sits on beat 2 of bar 1, as in the tokens, not at the file's start
    ours = [(n.time, n.duration, n.pitch) for n in written.tracks[0].notes]
    theirs = [(n.time, n.duration, n.pitch) for n in expected.tracks[0].notes]
    assert ours == theirs and ours[0][0] == 480


def test_same_pitch_rule_on_hand_made_cases():
    note = Note(onset=10, duration=5, pitch=60, velocity=80)
    assert same_pitch_rule(None, note) == (STRIKE, 15)
    assert same_pitch_rule((0, 10), note) == (STRIKE, 15)  # released exactly at the onset: a new strike
    assert same_pitch_rule((10, 12), note) == (MERGE, 15)  # unison doubling: one note to the later end
    assert same_pitch_rule((10, 30), note) == (MERGE, 30)
    assert same_pitch_rule((4, 30), note) == (RESTRIKE, 15)  # struck again: the old note ends at 10
    assert same_pitch_rule(None, Note(10, 0, 60, 80)) == (STRIKE, 11)  # a note always lasts a tick
    notes = [Note(0, 8, 60, 70), Note(0, 16, 60, 90), Note(0, 32, 64, 80), Note(8, 8, 64, 50), Note(8, 4, 67, 60)]
    assert sounding_notes(notes) == [Note(0, 16, 60, 70), Note(0, 8, 64, 80), Note(8, 8, 64, 50), Note(8, 4, 67, 60)]


def test_unison_doubling_and_restrike_read_back_as_the_rule_says_in_the_file_and_live(tmp_path):
    tok = PianoTokenizer("TSD")
    seq = ["Pitch_60", "Velocity_63", "Duration_1.0.8",   # t=0: C4 for a beat ...
           "Pitch_60", "Velocity_95", "Duration_2.0.8",   # ... doubled at once for two beats: one note, 2 beats
           "Pitch_64", "Velocity_63", "Duration_4.0.4",   # E4 for four beats ...
           "TimeShift_1.0.8",
           "Pitch_64", "Velocity_95", "Duration_1.0.8"]   # ... struck again after one beat
    ids = [tok.token_id(name) for name in seq]
    decoder, path = stream_and_write(tok, ids, tmp_path / "unison.mid")
    seconds = symusic.Score(str(path)).to("second")
    back = sorted((round(n.time, 4), round(n.duration, 4), n.pitch, n.velocity) for n in seconds.tracks[0].notes)
    assert back == [(0.0, 0.5, 64, 63), (0.0, 1.0, 60, 63), (0.5, 0.5, 64, 95)]  # 120 qpm: a beat is 0.5 s
    per_tick = 0.5 / tok.time_division
    assert back == sorted((round(n.onset * per_tick, 4), round(n.duration * per_tick, 4), n.pitch, n.velocity)
                          for n in sounding_notes(decoder.notes))
    # live: the stream a synth receives never holds one key twice, and every note-on gets its note-off
    tracker = NoteTracker()
    for event in decoder.events:
        tracker.observe(event.data, event.time)
        assert len(tracker.sounding()) == len(set(tracker.sounding()))
    assert tracker.count == 0


def test_a_take_saved_mid_performance_closes_every_sounding_note_at_the_save_time(tmp_path):
    events = [note_on(0.0, 60, 80), control_change(0.1, CC_SUSTAIN, 127), note_on(0.2, 64, 80), note_off(0.5, 60),
              note_on(1.2, 67, 80), note_off(1.5, 64), note_off(2.0, 67), control_change(2.0, CC_SUSTAIN, 0)]
    take = take_until(events, 1.0)
    assert [e for e in take if e.time < 1.0] == events[:4]
    assert sorted((e.time, e.data) for e in take if e.time >= 1.0) == [(1.0, (0x80, 64, 0)), (1.0, (0xB0, CC_SUSTAIN, 0))]
    path = write_midi_file(take, tmp_path / "take.mid")
    notes = symusic.Score(str(path)).to("second").tracks[0].notes
    assert sorted((round(n.time, 3), round(n.end, 3), n.pitch) for n in notes) == [(0.0, 0.5, 60), (0.2, 1.0, 64)]
    assert take_until([MidiEvent(0.0, 2, (0x90, 60, 80))], 0.0) == []  # nothing played yet: an empty take


def test_the_generate_pane_saves_a_running_take_up_to_the_playhead(tmp_path):
    import torch

    from engine.generate import GenerationSession, SamplingConfig
    from engine.midi.scheduler import LookaheadScheduler
    from engine.model import RWKV7, ModelConfig
    from engine.generate.performance import Knobs, Performance, PerformanceSettings
    from tests.unit.midi_helpers import FakeClock, FakeOutput

    tok = PianoTokenizer("REMI")
    torch.manual_seed(0)
    model = RWKV7(ModelConfig(n_layer=1, n_embd=64, head_size=32, vocab_size=tok.vocab_size)).eval()
    session = GenerationSession(model, tok, SamplingConfig(seed=5), bars=64, max_tokens=400)
    session.prefill()
    while len(session.rows[0].decoder.events) < 40:  # still generating: notes sound past any cut
        session.step()
    performance = Performance(PerformanceSettings(checkpoint=None), Knobs())
    performance.session = session
    clock = FakeClock(jitter=0.0, limit=0.0)  # the sender never moves the clock: the test sets the playhead
    scheduler = performance.player.scheduler = LookaheadScheduler(FakeOutput(), clock=clock)
    performance._active.set()
    events = session.events(0)
    cut = events[len(events) // 2].time + 1e-3
    try:
        scheduler.start()
        with clock.lock:
            clock.t = scheduler._origin + cut
        (path,) = performance.save(tmp_path / "take.mid")
    finally:
        scheduler.stop(panic=False)
    notes = symusic.Score(str(path)).to("second").tracks[0].notes
    tracker = NoteTracker()
    for event in events:
        if event.time < cut:
            tracker.observe(event.data, event.time)
    assert tracker.count > 0  # something was sounding at the cut
    in_file = cut - session.rows[0].decoder.meter().start  # the file begins at the first bar line
    assert max(n.end for n in notes) == pytest.approx(in_file, abs=2e-3)
    assert sum(abs(n.end - in_file) < 2e-3 for n in notes) >= tracker.count
    assert len(notes) == sum(e.is_note_on and e.time < cut for e in events)

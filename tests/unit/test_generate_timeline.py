"""TokenTimeline and StreamDecoder against MidiTok's own decoding of real corpus files (REMI and TSD)."""
from __future__ import annotations

import pytest

from engine.data.tokenizer import PianoTokenizer
from engine.generate import StreamDecoder, TokenTables, TokenTimeline
from engine.midi import NoteTracker
from engine.paths import CORPUS_DIR

FILES = sorted(CORPUS_DIR.glob("piano/*.mid"))[:3] + sorted(CORPUS_DIR.glob("chorales/*.mid"))[:2]


@pytest.fixture(scope="module", params=["REMI", "TSD"])
def tokenizer(request):
    return PianoTokenizer(request.param)


def pedal_spans(items):
    spans, down = [], None
    for item in items:
        if item[0] == "pedal":
            if item[2]:
                down = item[1]
            else:
                spans.append((down, item[1] - down))
    return spans


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_timeline_matches_the_tokenizers_decode(tokenizer, path):
    ids = tokenizer.encode_file(path)
    timeline = TokenTimeline(TokenTables(tokenizer))
    items = timeline.feed_all(ids)
    score = tokenizer.decode(ids)
    ours = [(n.onset, n.duration, n.pitch, n.velocity) for kind, n, *_ in items if kind == "note"]
    theirs = [(n.time, n.duration, n.pitch, n.velocity) for track in score.tracks for n in track.notes]
    assert ours and ours == theirs
    assert pedal_spans(items) == [(p.time, p.duration) for track in score.tracks for p in track.pedals]
    assert [(i[1], round(i[2], 2)) for i in items if i[0] == "tempo"] == [(t.time, round(t.qpm, 2)) for t in score.tempos]
    in_seconds = score.to("second")
    onsets = [n.time for track in in_seconds.tracks for n in track.notes]
    # symusic stores tempo as whole microseconds per quarter: 0.1 ms of rounding over a piece
    assert max(abs(timeline.seconds(o[0]) - s) for o, s in zip(ours, onsets)) < 1e-3


def test_stream_decoder_releases_every_note_in_time_order(tokenizer):
    ids = tokenizer.encode_file(FILES[-1])
    decoder = StreamDecoder(TokenTables(tokenizer))
    streamed = []
    for token in ids:
        streamed += decoder.feed(token)
        assert all(e.time <= decoder.horizon + 1e-9 for e in streamed)  # never an event past the generation front
    streamed += decoder.finish()
    times = [e.time for e in streamed]
    assert times == sorted(times) and times[0] == 0.0
    tracker = NoteTracker()
    for e in streamed:
        tracker.observe(e.data, 0.0)
    assert tracker.count == 0 and not tracker.sustain_down
    assert sum(e.is_note_on for e in streamed) == len(decoder.notes)


def test_restruck_pitch_is_released_before_it_sounds_again():
    tok = PianoTokenizer("TSD")
    tables = TokenTables(tok)
    decoder = StreamDecoder(tables)
    seq = ["Pitch_60", "Velocity_63", "Duration_2.0.8", "TimeShift_1.0.8", "Pitch_60", "Velocity_63", "Duration_1.0.8"]
    events = [e for name in seq for e in decoder.feed(tok.token_id(name))] + decoder.finish()
    kinds = [("on" if e.is_note_on else "off", round(e.time, 6)) for e in events]
    assert kinds == [("on", 0.0), ("off", 0.5), ("on", 0.5), ("off", 1.0)]  # 120 qpm: a quarter is 0.5 s

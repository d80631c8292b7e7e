"""TokenTimeline and StreamDecoder against MidiTok's own decoding of real corpus files (REMI and TSD)."""
from __future__ import annotations

import pytest

from engine.data.tokenizer import PianoTokenizer
from engine.generate import StreamDecoder, TokenTables, TokenTimeline
from engine.generate.timeline import sounding_notes
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
    # one note-on per note as the piano sounds them (a unison doubling is one note)
    assert sum(e.is_note_on for e in streamed) == len(sounding_notes(decoder.notes))


def test_restruck_pitch_is_released_before_it_sounds_again():
    tok = PianoTokenizer("TSD")
    tables = TokenTables(tok)
    decoder = StreamDecoder(tables)
    seq = ["Pitch_60", "Velocity_63", "Duration_2.0.8", "TimeShift_1.0.8", "Pitch_60", "Velocity_63", "Duration_1.0.8"]
    events = [e for name in seq for e in decoder.feed(tok.token_id(name))] + decoder.finish()
    kinds = [("on" if e.is_note_on else "off", round(e.time, 6)) for e in events]
    assert kinds == [("on", 0.0), ("off", 0.5), ("on", 0.5), ("off", 1.0)]  # 120 qpm: a quarter is 0.5 s


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_striking_at_the_velocity_sends_the_same_events_one_token_sooner(tokenizer, path):
    """``strike_early`` (a live duet): every note-on (and a re-strike's note-off) comes out of the
    Velocity token's feed, not the Duration's; the whole stream is the same events in the same order."""
    ids = tokenizer.encode_file(path)
    ids += [tokenizer.token_id(name) for name in  # a unison doubling, then a re-strike of that pitch
            ("Pitch_60", "Velocity_63", "Duration_2.0.8", "Pitch_60", "Velocity_63", "Duration_1.0.8",
             "TimeShift_1.0.8" if tokenizer.tokenization == "TSD" else "Bar_None", "Pitch_60", "Velocity_63", "Duration_1.0.8")]
    plain, early = StreamDecoder(TokenTables(tokenizer)), StreamDecoder(TokenTables(tokenizer))
    early.strike_early = True
    kinds = TokenTables(tokenizer).kind
    streams: list[list] = [[], []]
    for token in ids:
        for stream, decoder in zip(streams, (plain, early)):
            events = decoder.feed(token)
            stream += events
            if decoder is early and kinds[token] == "Duration":
                assert not any(e.is_note_on for e in events)
            if decoder is plain and kinds[token] == "Velocity":
                assert not any(e.is_note_on for e in events)
    streams[0] += plain.finish()
    streams[1] += early.finish()
    assert [(e.time, e.data) for e in streams[1]] == [(e.time, e.data) for e in streams[0]]
    assert sum(e.is_note_on for e in streams[1]) == len(sounding_notes(early.notes)) and early.notes == plain.notes


def pedalled_score_with_a_tempo_change():
    """Four bars at 120 then 80 qpm: a held bass note under a melody, the sustain pedal pressed four times."""
    import symusic

    score = symusic.Score(480)
    score.tempos.append(symusic.Tempo(0, 120.0))
    score.tempos.append(symusic.Tempo(2 * 1920, 80.0))
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    track = symusic.Track("piano", 0, False)
    track.notes.append(symusic.Note(0, 1900, 48, 70))
    for i in range(16):
        track.notes.append(symusic.Note(i * 480, 400, 60 + (i * 5) % 12, 80))
    for start, duration in ((0, 900), (960, 800), (3840, 1200), (5760, 960)):
        track.pedals.append(symusic.Pedal(start, duration))
    score.tracks.append(track)
    return score


def test_streamed_notes_and_pedal_land_at_the_seconds_the_tokenizer_decodes_to(tokenizer):
    from engine.midi.events import CC_SUSTAIN

    ids = tokenizer.encode_score(pedalled_score_with_a_tempo_change())
    decoder = StreamDecoder(TokenTables(tokenizer))
    streamed = []
    for token in ids:
        streamed += decoder.feed(token)
    streamed += decoder.finish()
    in_seconds = tokenizer.decode(ids).to("second")
    notes = [n for track in in_seconds.tracks for n in track.notes]
    pedals = [p for track in in_seconds.tracks for p in track.pedals]
    assert len(pedals) == 4 and len({round(t.qpm) for t in in_seconds.tempos}) == 2
    expected_pedal = sorted([(p.time, 127) for p in pedals] + [(p.time + p.duration, 0) for p in pedals])
    got_pedal = [(e.time, e.data[2]) for e in streamed if e.status == 0xB0 and e.data[1] == CC_SUSTAIN]
    assert [v for _, v in got_pedal] == [v for _, v in expected_pedal]  # down, up, down, up, ...
    # symusic keeps tempo as whole microseconds per quarter: well under a millisecond over the piece
    assert max(abs(a - b) for (a, _), (b, _) in zip(got_pedal, expected_pedal)) < 1e-3
    expected_notes = sorted((n.time, n.pitch, n.time + n.duration) for n in notes)
    ons = sorted((e.time, e.data[1]) for e in streamed if e.is_note_on)
    offs = sorted((e.time, e.data[1]) for e in streamed if e.is_note_off)
    assert [p for _, p in ons] == [p for _, p, _ in expected_notes]
    assert max(abs(t - s) for (t, _), (s, _, _) in zip(ons, expected_notes)) < 1e-3
    assert max(abs(t - e) for (t, _), (e, _) in zip(offs, sorted((end, p) for _, p, end in expected_notes))) < 1e-3
    assert ons[-1][0] > 8.5  # the last bars run at 80 qpm (all at 120 qpm the last note would start at 7.5 s)

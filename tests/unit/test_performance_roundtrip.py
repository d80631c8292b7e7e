"""The performance-like test set, the round-trip measures (on hand-made inputs with known answers),
and the `performance` tokenizer preset."""
from __future__ import annotations

import numpy as np
import pytest
import symusic

from engine.data.humanize import HumanizeOptions, humanize, piece_seed
from engine.data.tokenizer import PianoTokenizer, TokenizerConfigError
from engine.eval.roundtrip import RoundTrip, compare, roundtrip
from engine.generate import StreamDecoder, TokenTables
from engine.paths import CORPUS_DIR

PIECES = [CORPUS_DIR / "piano" / "chopin_mazurka_op6_no2.mid", CORPUS_DIR / "piano" / "bach_bwv846_prelude.mid",
          sorted(CORPUS_DIR.glob("chorales/*.mid"))[0]]


def seconds_of(score) -> np.ndarray:
    return np.array(sorted(n.time for t in score.to("second").tracks for n in t.notes))


def test_humanize_is_seeded_and_does_what_it_says():
    score = symusic.Score(str(PIECES[0]))
    a, b, c = humanize(score, 1), humanize(score, 1), humanize(score, 2)
    notes = lambda s: [(n.time, n.duration, n.pitch, n.velocity) for n in s.tracks[0].notes]  # noqa: E731
    assert notes(a) == notes(b) and notes(a) != notes(c)
    assert [round(t.qpm, 3) for t in a.tempos] == [120.0] and a.ticks_per_quarter == 480
    assert len(a.tracks[0].notes) == sum(len(t.notes) for t in score.tracks)
    original = seconds_of(score)
    # jitter alone: onsets move by ~20 ms (s.d.), never beyond 2.5 s.d.
    jittered = seconds_of(humanize(score, 3, HumanizeOptions(rubato=0.0)))
    shift = jittered - original  # small moves keep the sorted order almost everywhere
    assert 0.015 < np.median(np.abs(shift)) / 0.6745 < 0.025 and np.abs(shift).max() <= 0.0505
    # nothing at all: the piece at its own seconds, to a tick
    plain = seconds_of(humanize(score, 3, HumanizeOptions(rubato=0.0, jitter_ms=0.0)))
    assert np.abs(plain - original).max() < 0.0011
    # rubato moves whole passages (well beyond the jitter), velocities span the range, the pedal is used
    assert np.abs(seconds_of(humanize(score, 3, HumanizeOptions(jitter_ms=0.0))) - original).max() > 0.2
    velocities = [n.velocity for n in a.tracks[0].notes]
    assert max(velocities) - min(velocities) > 60
    assert len(a.tracks[0].pedals) > 20 and piece_seed("x.mid", 0) == piece_seed("x.mid", 0) != piece_seed("y.mid", 0)


def hand_made() -> symusic.Score:
    """Four notes and two pedal presses at 120 qpm (960 ticks a second)."""
    score = symusic.Score(480)
    score.tempos.append(symusic.Tempo(0, 120.0))
    track = symusic.Track("piano", 0, False)
    for i, pitch in enumerate((60, 64, 67, 72)):
        track.notes.append(symusic.Note(i * 960, 480, pitch, 80))
    track.pedals.append(symusic.Pedal(0, 900))
    track.pedals.append(symusic.Pedal(1920, 900))
    score.tracks.append(track)
    return score


def test_round_trip_measures_on_a_hand_made_piece_with_known_errors():
    original = hand_made()
    decoded = hand_made()
    notes = decoded.tracks[0].notes
    moved = [symusic.Note(n.time + 48, n.duration - 96, n.pitch, n.velocity + 3) for n in notes]  # +50 ms, -100 ms, +3
    notes.clear()
    for n in moved[:3]:  # the last note is lost
        notes.append(n)
    decoded.tracks[0].pedals[1] = symusic.Pedal(1920 + 192, 900)  # 200 ms late: not kept
    result = compare(original, decoded, tokens=20).summary()
    assert result["notes"] == 4 and result["notes_lost_pct"] == 25.0
    assert result["onset_p50_ms"] == pytest.approx(50.0) and result["onset_p95_ms"] == pytest.approx(50.0)
    assert result["duration_p95_ms"] == pytest.approx(100.0) and result["velocity_mean"] == pytest.approx(3.0)
    assert result["pedals"] == 2 and result["pedals_kept_pct"] == 50.0 and result["tokens_per_note"] == 5.0
    assert compare(original, hand_made()).summary()["onset_p95_ms"] == 0.0


def test_the_performance_preset_keeps_performances_within_ten_ms_and_the_score_preset_does_not():
    performance, score = PianoTokenizer.from_config({"preset": "performance"}), PianoTokenizer.from_config({"preset": "score"})
    played = [humanize(symusic.Score(str(p)), piece_seed(p.name, 0)) for p in PIECES]
    fine = sum((roundtrip(performance, s) for s in played), RoundTrip()).summary()
    coarse = sum((roundtrip(score, s) for s in played), RoundTrip()).summary()
    assert fine["onset_p95_ms"] <= 10.0 and fine["notes_lost_pct"] == 0.0 and fine["pedals_kept_pct"] == 100.0
    assert fine["velocity_p95"] <= 2.0 and performance.vocab_size < 600
    assert coarse["onset_p95_ms"] > 50.0  # a coarse grid and tempo bins drift on free timing


def test_a_performance_recorded_at_another_tempo_keeps_its_seconds():
    performance = PianoTokenizer.from_config({"preset": "performance"})
    played = humanize(symusic.Score(str(PIECES[1])), 5)
    at_100 = symusic.Score(480)
    at_100.tempos.append(symusic.Tempo(0, 100.0))  # the same ticks at 100 qpm: every second 1.2x later
    at_100.tracks.append(played.tracks[0].copy())
    result = roundtrip(performance, at_100).summary()
    assert result["onset_p95_ms"] <= 10.0 and result["notes_lost_pct"] == 0.0
    assert [round(t.qpm) for t in performance.decode(performance.encode_score(at_100)).tempos] == [120]


def test_presets_round_trip_through_a_saved_config_and_bad_ones_are_one_sentence():
    tok = PianoTokenizer.from_config({"preset": "performance"})
    again = PianoTokenizer.from_config(tok.to_config())
    assert again == tok and again.fixed_tempo == 120.0 and tok.tokenization == "TSD"
    assert PianoTokenizer.from_config({"preset": "score"}) == PianoTokenizer.from_config({})  # the defaults
    assert PianoTokenizer.from_config({"preset": "performance", "num_velocities": 16}).vocab_size < tok.vocab_size
    with pytest.raises(TokenizerConfigError, match="unknown tokenizer preset 'perf'; use one of: score"):
        PianoTokenizer.from_config({"preset": "perf"})
    with pytest.raises(TokenizerConfigError, match="fixed_tempo must be"):
        PianoTokenizer.from_config({"fixed_tempo": "fast"})


def test_streamed_performance_tokens_land_at_the_seconds_they_decode_to():
    tok = PianoTokenizer.from_config({"preset": "performance"})
    ids = tok.encode_score(humanize(symusic.Score(str(PIECES[1])), 9))
    decoder = StreamDecoder(TokenTables(tok), start_at_first_event=False)
    events = [e for token in ids for e in decoder.feed(token)] + decoder.finish()
    onsets = sorted(e.time for e in events if e.is_note_on)
    assert np.abs(np.array(onsets) - seconds_of(tok.decode(ids))).max() < 1e-3

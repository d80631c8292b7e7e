"""Musical metrics on hand-made note lists whose answers are known by construction."""
from __future__ import annotations

import math

import numpy as np
import pytest

from engine.eval import metrics as m

C_MAJOR = [60, 62, 64, 65, 67, 69, 71]


def scale(pitches=C_MAJOR, step=0.5, velocity=80) -> m.Performance:
    return m.Performance.from_notes([(i * step, step, p, velocity) for i, p in enumerate(pitches)])


def test_c_major_scale_pitch_class_entropy_is_log2_7():
    assert m.pitch_class_entropy(scale()) == pytest.approx(math.log2(7))


def test_pitch_class_entropy_of_one_repeated_note_is_zero_and_chromatic_is_log2_12():
    assert m.pitch_class_entropy(scale([60] * 5)) == 0.0
    assert m.pitch_class_entropy(scale(list(range(60, 72)))) == pytest.approx(math.log2(12))


def test_pitch_class_entropy_ignores_octaves():
    # C4 and C5 are one pitch class: {C: 2, E: 1, G: 1}
    expected = -(0.5 * math.log2(0.5) + 2 * 0.25 * math.log2(0.25))
    assert m.pitch_class_entropy(scale([60, 64, 67, 72])) == pytest.approx(expected)


def test_pitch_range_and_density_of_a_scale():
    perf = scale()
    assert m.pitch_range(perf) == 11  # C4..B4
    # 7 notes over 3.5 s (first onset to last release)
    assert m.note_density(perf) == pytest.approx(2.0)
    assert math.isnan(m.pitch_range(m.Performance.from_notes([])))


def test_polyphony_of_a_triad_is_three():
    chord = m.Performance.from_notes([(0, 1, 60, 80), (0, 1, 64, 80), (0, 1, 67, 80)])
    assert m.polyphony_mean(chord) == pytest.approx(3.0)
    assert m.polyphony_max(chord) == 3
    hist = m.polyphony_histogram(chord)
    assert hist[2] == pytest.approx(1.0) and hist.sum() == pytest.approx(1.0)


def test_polyphony_is_time_weighted_and_legato_is_not_overlap():
    # a 2 s bass note under two 1 s melody notes played legato: always exactly 2 sounding
    perf = m.Performance.from_notes([(0, 2, 48, 80), (0, 1, 72, 80), (1, 1, 74, 80)])
    assert m.polyphony_mean(perf) == pytest.approx(2.0)
    assert m.polyphony_max(perf) == 2
    # one note alone for 3 s, then a 1 s dyad on top of it: (1*3 + 2*1) / 4
    perf = m.Performance.from_notes([(0, 4, 48, 80), (3, 1, 60, 80)])
    assert m.polyphony_mean(perf) == pytest.approx(5 / 4)


def test_inter_onset_intervals_treat_a_chord_as_one_onset():
    perf = m.Performance.from_notes([(0, 1, 60, 80), (0, 1, 64, 80), (0.25, 1, 62, 80), (0.75, 1, 65, 80)])
    np.testing.assert_allclose(m.inter_onset_intervals(perf), [0.25, 0.5])
    hist = m.ioi_histogram(perf)
    # 0.25 s and 0.5 s are bin edges of the half-octave grid: two different bins, one each
    assert hist.sum() == 2 and (hist == 1).sum() == 2
    assert hist[list(m.LOG_TIME_EDGES).index(0.25)] == 1


def test_velocity_histogram_bins():
    perf = m.Performance.from_notes([(i, 1, 60, v) for i, v in enumerate([1, 7, 8, 127])])
    hist = m.velocity_histogram(perf)
    assert len(hist) == 16
    assert hist[0] == 2 and hist[1] == 1 and hist[15] == 1


def test_pedal_fraction_merges_overlapping_presses():
    notes = [(0, 4, 60, 80)]
    perf = m.Performance.from_notes(notes, pedals=[(0, 1), (0.5, 1), (3, 2)])  # [0,1.5) + [3,4) in span
    assert m.pedal_fraction(perf) == pytest.approx(2.5 / 4)
    assert m.pedal_presses_per_minute(perf) == pytest.approx(3 / (4 / 60))
    assert m.pedal_fraction(m.Performance.from_notes(notes)) == 0.0


def test_stuck_notes_counts_notes_beyond_the_limit():
    perf = m.Performance.from_notes([(0, 0.5, 60, 80), (0, 30, 64, 80)])
    assert m.stuck_notes(perf) == 1
    assert m.stuck_notes(perf, limit_s=60) == 0


def test_overlapping_area_and_kl_of_identical_histograms():
    counts = np.array([3.0, 0.0, 5.0, 2.0])
    assert m.overlapping_area(counts, counts) == pytest.approx(1.0)
    assert m.kl_divergence(counts, counts) == 0.0
    # scale does not matter: they are compared as distributions
    assert m.overlapping_area(counts, 10 * counts) == pytest.approx(1.0)
    assert m.kl_divergence(counts, 10 * counts) == pytest.approx(0.0, abs=1e-12)


def test_overlapping_area_and_kl_of_disjoint_histograms():
    p, q = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert m.overlapping_area(p, q) == 0.0
    # the uniform mix bounds KL: p' = (0.995, 0.005), q' = (0.005, 0.995)
    expected = 0.995 * math.log(0.995 / 0.005) + 0.005 * math.log(0.005 / 0.995)
    assert m.kl_divergence(p, q) == pytest.approx(expected)
    assert math.isnan(m.overlapping_area(p, np.zeros(2)))


def test_overlapping_area_of_half_shifted_histograms():
    assert m.overlapping_area(np.array([1, 1, 0]), np.array([0, 1, 1])) == pytest.approx(0.5)


def test_compare_sets_identical_sets_overlap_fully():
    perfs = [scale(), scale([72, 71, 69, 67], step=0.25, velocity=100),
             m.Performance.from_notes([(0, 1, 60, 80), (0, 1, 64, 80)], pedals=[(0, 0.5)])]
    report = m.compare_sets(perfs, perfs)
    for section in ("features", "histograms"):
        for name, entry in report[section].items():
            assert entry["oa"] == pytest.approx(1.0), name
            assert entry["kl_nats"] == pytest.approx(0.0, abs=1e-12), name
    assert set(report["features"]) == set(m.SCALAR_FEATURES)
    assert report["features"]["pitch_class_entropy"]["real"]["n"] == 3


def test_compare_sets_sees_a_different_register():
    real = [scale(), scale([62, 64, 65])]
    generated = [scale([p + 24 for p in C_MAJOR]), scale([86, 88, 89])]
    report = m.compare_sets(real, generated)
    pitch = report["histograms"]["pitch"]
    assert pitch["oa"] == 0.0 and pitch["kl_nats"] > 1.0
    # the pitch classes are the same, only the octave moved
    assert report["histograms"]["pitch_class"]["oa"] == pytest.approx(1.0)


def test_performance_from_score_merges_tracks_and_converts_to_seconds():
    symusic = pytest.importorskip("symusic")
    score = symusic.Score(480)  # 120 bpm by default: a quarter note is 0.5 s
    for program, pitch in ((0, 60), (0, 64)):
        track = symusic.Track("piano", program, False)
        track.notes.append(symusic.Note(480, 480, pitch, 90))
        score.tracks.append(track)
    drums = symusic.Track("drums", 0, True)
    drums.notes.append(symusic.Note(0, 480, 36, 90))
    score.tracks.append(drums)
    perf = m.Performance.from_score(score)
    assert perf.n_notes == 2
    np.testing.assert_allclose(perf.onset, [0.5, 0.5])
    np.testing.assert_allclose(perf.duration, [0.5, 0.5])
    assert m.polyphony_mean(perf) == pytest.approx(2.0)

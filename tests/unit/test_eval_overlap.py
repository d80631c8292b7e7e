"""Training-set overlap: the longest copied run of notes, checked against brute force."""
from __future__ import annotations

import numpy as np
import pytest

from engine.eval.metrics import Performance
from engine.eval.overlap import NgramIndex, note_symbols, window_hashes


def brute_longest(query, pieces) -> int:
    best = 0
    for piece in pieces:
        for i in range(len(query)):
            for j in range(len(piece)):
                k = 0
                while i + k < len(query) and j + k < len(piece) and query[i + k] == piece[j + k]:
                    k += 1
                best = max(best, k)
    return best


def test_window_hashes_agree_with_a_direct_polynomial():
    rng = np.random.default_rng(1)
    seq = rng.integers(0, 50, 40)
    for length in (1, 2, 3, 5, 8, 13, 40):
        hashes = window_hashes(seq, length)
        assert len(hashes) == len(seq) - length + 1
        # equal windows hash equal, whatever the binary-lifting order
        for i in range(len(hashes)):
            for j in range(len(hashes)):
                if np.array_equal(seq[i:i + length], seq[j:j + length]):
                    assert hashes[i] == hashes[j]
    assert len(window_hashes(seq, 41)) == 0


def test_constructed_copy_is_found_with_its_source():
    rng = np.random.default_rng(0)
    training = [rng.integers(0, 12, 200) for _ in range(5)]
    copied = training[3][50:73]  # 23 notes
    query = np.concatenate([rng.integers(20, 30, 15), copied, rng.integers(20, 30, 15)])
    index = NgramIndex(training, names=[f"piece{i}" for i in range(5)])
    run = index.longest_copied(query)
    assert run.notes == 23
    assert run.source == "piece3"
    assert run.query_start == 15


def test_matches_do_not_cross_piece_boundaries():
    index = NgramIndex([np.array([1, 2, 3]), np.array([4, 5, 6])])
    # 3,4 only exists across the boundary between the two pieces
    assert index.longest_copied(np.array([2, 3, 4, 5])).notes == 2
    assert index.longest_copied(np.array([9, 9])).notes == 0
    assert index.longest_copied(np.array([], dtype=np.int64)).notes == 0


@pytest.mark.parametrize("seed", range(5))
def test_longest_copied_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    training = [rng.integers(0, 3, int(rng.integers(5, 60))) for _ in range(4)]
    index = NgramIndex(training)
    for _ in range(5):
        query = rng.integers(0, 3, int(rng.integers(1, 40)))
        assert index.longest_copied(query).notes == brute_longest(list(query), [list(p) for p in training])


def test_note_symbols_see_rhythm_and_ignore_absolute_time():
    melody = [(0.0, 0.5, 60, 80), (0.5, 0.5, 62, 80), (1.0, 0.5, 64, 80), (2.0, 0.5, 65, 80)]
    later = [(t + 7.3, d, p, v) for t, d, p, v in melody]
    a = note_symbols(Performance.from_notes(melody))
    b = note_symbols(Performance.from_notes(later))
    np.testing.assert_array_equal(a, b)
    faster = [(t / 2, d, p, v) for t, d, p, v in melody]
    c = note_symbols(Performance.from_notes(faster))
    assert not np.array_equal(a[1:], c[1:])
    np.testing.assert_array_equal(note_symbols(Performance.from_notes(faster), with_ioi=False), [60, 62, 64, 65])


def test_copied_passage_of_notes_in_a_new_context():
    rng = np.random.default_rng(3)
    source = [(i * 0.25, 0.25, int(p), 70) for i, p in enumerate(rng.integers(48, 84, 120))]
    index = NgramIndex.from_performances([Performance.from_notes(source)], names=["source.mid"])
    # 30 notes copied (shifted in time), after 5 unrelated notes in a different rhythm
    intro = [(i * 0.6, 0.3, 100 + i, 70) for i in range(5)]
    copy = [(3.0 + t - source[40][0], d, p, v) for t, d, p, v in source[40:70]]
    run = index.longest_copied(note_symbols(Performance.from_notes(intro + copy)))
    # the first copied note follows a different gap, so 29 of the 30 match with their rhythm
    assert run.notes == 29 and run.source == "source.mid"

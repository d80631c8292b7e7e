"""The n-gram baseline, the structure measures and the any-key copy check, on hand-made inputs
whose answers are worked out by hand."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from engine.eval.metrics import Performance
from engine.eval.ngram import KneserNey, augmented, choose_order
from engine.eval.overlap import NgramIndex, note_symbols
from engine.eval.structure import BarNotes, detect_key, in_key_share, jaccard, key_correlation, self_reuse


def test_kneser_ney_matches_a_hand_computation():
    # one piece 3 4 3 4 (PAD = 0 before it), vocabulary 5, order 2:
    # bigram counts (0,3)=1 (3,4)=2 (4,3)=1 -> D2 = 2 / (2 + 2) = 0.5
    # continuation counts: 3 follows {0, 4} -> 2, 4 follows {3} -> 1; n1 = n2 = 1 -> D1 = 1/3
    # P1(4) = (1 - 1/3) / 3 + (1/3) * 2/3 * 1/5 ; P2(4 | 3) = (2 - 0.5) / 2 + 0.5 * 1/2 * P1(4)
    model = KneserNey.fit([[3, 4, 3, 4]], vocab_size=5, order=2)
    p1 = (2 / 3) / 3 + (1 / 3) * (2 / 3) / 5
    p2 = 1.5 / 2 + 0.5 * 0.5 * p1
    (bits,) = model.token_bits([[3, 4]])
    assert bits.tolist() == pytest.approx([-math.log2(p2)])
    # every context's distribution sums to one, seen or not
    for context in ([3], [4], [2], [0, 1]):
        total = sum(2.0 ** -model.token_bits([[*context, w]])[0][-1] for w in range(5))
        assert total == pytest.approx(1.0)
    # an unseen context falls back to the unigram level
    (unseen,) = model.token_bits([[2, 4]])
    assert unseen.tolist() == pytest.approx([-math.log2(p1)])


def test_the_order_is_chosen_on_held_out_training_pieces():
    rng = np.random.default_rng(0)
    # the next token depends on the two before it: 1 1 2 2 1 1 2 2 ... from a random phase
    pattern = [1, 1, 2, 2]
    pieces = [[pattern[(i + phase) % 4] for i in range(40)] for phase in rng.integers(0, 4, 40)]
    order, scores = choose_order(pieces, SimpleNamespace(vocab_size=4), transpose_range=0, orders=(1, 2, 3))
    assert order == 3 and scores[3] < scores[2] < scores[1]


def test_augmentation_transposes_like_training_and_skips_what_leaves_the_keyboard():
    from engine.data.tokenizer import PianoTokenizer

    tok = PianoTokenizer()
    low, high = tok.token_id("Pitch_21"), tok.token_id("Pitch_60")
    out = augmented([[low], [high]], tok, 1)
    # the piece at A0 cannot go down; C4 goes both ways
    assert sorted(map(tuple, out)) == sorted([(low,), (high,), (tok.token_id("Pitch_22"),),
                                              (tok.token_id("Pitch_59"),), (tok.token_id("Pitch_61"),)])


def notes_of(bars: list[list[tuple[float, int]]], start: int = 0) -> BarNotes:
    """Notes from per-bar (position in the bar, pitch) lists, each a quarter of a bar long."""
    onset, pitch = [], []
    for b, content in enumerate(bars):
        for position, p in content:
            onset.append(start + b + position)
            pitch.append(p)
    return BarNotes(onset, [0.25] * len(onset), pitch)


def test_self_reuse_on_exact_partial_and_no_repeats():
    a = [(0.0, 60), (0.25, 62), (0.5, 64), (0.75, 65)]
    b = [(0.0, 67), (0.5, 65)]
    other = [(0.0, 50), (0.5, 52)]
    assert self_reuse(notes_of([a, b, a, b]), from_bar=2) == 1.0  # bars 3-4 repeat bars 1-2
    assert self_reuse(notes_of([a, b, other, other]), from_bar=2) == 0.0
    # half of the window shared: {a-notes, b-notes} vs {a-notes, other}: 4 shared of 4 + 2 + 2
    assert self_reuse(notes_of([a, b, a, other]), from_bar=2) == pytest.approx(4 / 8)
    # the best earlier window counts, at any whole-bar offset (here bars 2-3)
    assert self_reuse(notes_of([other, a, b, other, a, b]), from_bar=4) == 1.0
    assert math.isnan(self_reuse(notes_of([a, b, [], []]), from_bar=2))
    assert jaccard(set(), set()) == 0.0


def test_key_detection_in_key_share_and_key_correlation():
    c_major = [60, 62, 64, 65, 67, 69, 71, 72]
    scale = notes_of([[(i / 8, p) for i, p in enumerate(c_major)]] * 4)
    assert detect_key(scale)[:2] == (0, "major") and in_key_share(scale) == 1.0
    with_f_sharp = notes_of([[(i / 8, p) for i, p in enumerate(c_major[:-1] + [66])]] * 4)
    assert in_key_share(with_f_sharp) == pytest.approx(7 / 8)
    a_minor = notes_of([[(0.0, 57), (0.25, 60), (0.5, 64), (0.75, 68)]] * 4)  # A C E G#
    assert detect_key(a_minor)[:2] == (9, "minor") and in_key_share(a_minor) == 1.0
    # a window weighted exactly like the C major profile correlates 1.0
    from engine.eval.structure import KK_MAJOR

    profile = BarNotes(np.zeros(12), KK_MAJOR / 10, np.arange(60, 72))
    assert key_correlation(profile) == pytest.approx(1.0)
    chromatic = BarNotes(np.zeros(12), np.full(12, 0.25), np.arange(60, 72))  # no key at all
    assert key_correlation(chromatic) == 0.0


def test_bar_notes_follow_the_time_signatures():
    import symusic

    score = symusic.Score(480)
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    score.time_signatures.append(symusic.TimeSignature(1920, 3, 4))
    track = symusic.Track("piano", 0, False)
    for tick in (0, 960, 1920, 2400, 3360):  # bar 1 beat 1 and 3; bar 2 (3/4) beat 1 and 2; bar 3 beat 1
        track.notes.append(symusic.Note(tick, 480, 60, 80))
    score.tracks.append(track)
    notes = BarNotes.from_score(score)
    assert notes.onset.tolist() == pytest.approx([0.0, 0.5, 1.0, 1 + 1 / 3, 2.0])
    assert notes.duration.tolist() == pytest.approx([0.25, 0.25, 1 / 3, 1 / 3, 1 / 3])


def test_the_any_key_copy_check_catches_a_transposed_copy():
    rng = np.random.default_rng(1)
    onsets = np.cumsum(rng.choice([0.25, 0.5], 40))
    pitches = rng.integers(55, 80, 40)
    source = Performance(onsets, np.full(40, 0.2), pitches, np.full(40, 80))
    moved = Performance(onsets[10:30], np.full(20, 0.2), pitches[10:30] + 5, np.full(20, 80))
    exact = NgramIndex.from_performances([source], ["source"])
    any_key = NgramIndex.from_performances([source], ["source"], any_key=True)
    assert exact.longest_copied(note_symbols(moved)).notes <= 3  # chance agreements only
    run = any_key.longest_copied(note_symbols(moved, any_key=True))
    assert run.notes == 19 and run.source == "source"  # every note but the first (no interval before it)


def test_the_baseline_is_fitted_once_per_data_and_augmentation(tmp_path, monkeypatch):
    from engine.data.tokenizer import PianoTokenizer
    from engine.eval.likelihood import LikelihoodResult
    from engine.eval.report import EvalData, EvalOptions, _baseline

    monkeypatch.setenv("PIANOMUSE_CACHE", str(tmp_path))
    tok = PianoTokenizer()
    rng = np.random.default_rng(0)
    pitches = [tok.token_id(f"Pitch_{p}") for p in range(55, 75)]
    pieces = [[tok.bos_id, *rng.choice(pitches, 30).tolist()] for _ in range(12)]
    data = EvalData(tok, [("val", pieces[0], None)], [(f"p{i}", p) for i, p in enumerate(pieces[1:])])
    scored = LikelihoodResult(nats=1.0, tokens=30, notes=30, seconds=10.0, pieces=1, scored=[pieces[0]])
    fitted, bits = _baseline(data, tok, scored, EvalOptions(transpose_range=1), lambda *a: None)
    again, bits_again = _baseline(data, tok, scored, EvalOptions(transpose_range=1), lambda *a: None)
    assert not fitted["cached"] and again["cached"]
    assert {k: v for k, v in again.items() if k != "cached"} == {k: v for k, v in fitted.items() if k != "cached"}
    assert [b.tolist() for b in bits_again] == [b.tolist() for b in bits] and len(bits[0]) == 30
    assert fitted["bits_per_note"] == pytest.approx(sum(b.sum() for b in bits) / 30)
    other, _ = _baseline(data, tok, scored, EvalOptions(transpose_range=0), lambda *a: None)
    assert not other["cached"]  # another augmentation is another baseline

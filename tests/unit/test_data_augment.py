"""Augmentation on token ids: transposition range and rejection, jitter, against real windows."""
from __future__ import annotations

import numpy as np
import pytest
import symusic

from data_helpers import PIANO_DIR, demo_store
from engine.data.augment import Augmenter
from engine.data.tokenizer import PianoTokenizer
from engine.data.windows import store_completion_windows


@pytest.fixture(scope="module")
def tok():
    return PianoTokenizer()


def _sample(tok, pitches):
    return np.array([tok.bos_id] + [t for p in pitches for t in (tok.token_id("Position_0"), tok.token_id(f"Pitch_{p}"),
                                                                 tok.token_id("Velocity_63"), tok.token_id("Duration_1.0.8"))])


def test_transposition_stays_on_the_keyboard(tok):
    aug = Augmenter(tok, transpose_range=6)
    high = _sample(tok, [60, 105])
    assert aug.allowed_shifts(high) == list(range(-6, 4))  # 105 + 3 = 108 is the top key
    low = _sample(tok, [23, 70])
    assert aug.allowed_shifts(low) == list(range(-2, 7))
    with pytest.raises(ValueError, match="off the piano range"):
        aug.transpose(high, 4)
    with pytest.raises(ValueError, match="outside the configured range"):
        aug.transpose(high, 7)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        out = aug(high, rng)
        pitches = tok.pitch_of_id[out][tok.pitch_of_id[out] >= 0]
        assert pitches.min() >= 21 and pitches.max() <= 108
        seen.add(int(pitches[0]) - 60)
    assert seen == set(range(-6, 4))  # every allowed shift is drawn, no other


def test_transposition_moves_only_pitches_and_decodes_shifted(tok):
    score = symusic.Score(str(PIANO_DIR / "mozart_k545_mvt1_exposition.mid"))
    ids = np.array(tok.encode_score(score))
    aug = Augmenter(tok, transpose_range=5)
    up = aug.transpose(ids, 5)
    is_pitch = tok.pitch_of_id[ids] >= 0
    assert np.array_equal(up[~is_pitch], ids[~is_pitch])
    assert np.array_equal(tok.pitch_of_id[up][is_pitch], tok.pitch_of_id[ids][is_pitch] + 5)
    before, after = tok.decode(ids).tracks[0].notes.numpy(), tok.decode(up).tracks[0].notes.numpy()
    assert np.array_equal(after["pitch"], before["pitch"] + 5) and np.array_equal(after["time"], before["time"])


@pytest.mark.slow
def test_jitter_keeps_kinds_lengths_and_context(tok):
    store = demo_store()
    windows = store_completion_windows(store, "val", context_bars=2, completion_bars=2, stride_bars=4)[:40]
    aug = Augmenter(store.tokenizer, transpose_range=0, velocity_jitter=2, tempo_jitter=0.2)
    rng = np.random.default_rng(1)
    velocity = {i: r for r, i in enumerate(store.tokenizer.value_order["Velocity"])}
    changed_tempo = 0
    for w in windows:
        out = aug(w, rng)
        assert out.ctx_len == w.ctx_len and len(out.tokens) == len(w.tokens)
        assert np.array_equal(store.tokenizer.kind_of_id[out.tokens], store.tokenizer.kind_of_id[w.tokens])
        v_in = [velocity[int(t)] for t in w.tokens if int(t) in velocity]
        v_out = [velocity[int(t)] for t in out.tokens if int(t) in velocity]
        shifts = {b - a for a, b in zip(v_in, v_out) if 2 <= a <= 29}  # away from the clipped ends
        assert len(shifts) <= 1 and all(abs(s) <= 2 for s in shifts)
        changed_tempo += int(not np.array_equal(out.tokens, w.tokens))
    assert changed_tempo > len(windows) // 2
    assert Augmenter(tok, transpose_range=0)(windows[0].tokens, rng).tolist() == windows[0].tokens.tolist()

"""Completion windows, packed chunks and collate, checked exactly against the store and the loss."""
from __future__ import annotations

import numpy as np
import pytest
import symusic
import torch

from data_helpers import demo_store
from engine.data.tokenizer import PianoTokenizer
from engine.data.windows import (
    collate, completion_windows, packed_chunks, state_prefix, store_completion_windows, store_packed_chunks, _StateTokens,
)
from engine.model.loss import completion_loss, completion_mask, shifted_targets


@pytest.fixture(scope="module")
def store():
    return demo_store()


def test_windows_cut_at_bars_and_carry_exact_context_lengths(store):
    tok = store.tokenizer
    bar = tok.token_id("Bar_None")
    n_checked = 0
    for piece in store.pieces("train")[:30]:
        tokens, bars = np.asarray(store.tokens(piece)), np.asarray(store.bars(piece))
        windows = completion_windows(tokens, bars, tok, context_bars=4, completion_bars=2, stride_bars=3, max_len=4096, piece=piece.index)
        assert [w.start_bar for w in windows] == list(range(0, len(bars) - 4, 3))
        for w in windows:
            split = w.start_bar + 4
            stop = split + 2
            end = bars[stop] if stop < len(bars) else len(tokens)
            expected = tokens[bars[split]:end].tolist() + ([tok.eos_id] if stop >= len(bars) else [])
            assert w.completion.tolist() == expected  # the completion is exactly those bars
            assert w.tokens[0] == tok.bos_id and w.tokens[1] == bar
            assert tok.token_kind(int(w.tokens[w.ctx_len])) in ("Bar", "Position")
            # the re-inserted state keeps every window a valid sentence of the grammar
            assert tok.grammar_matrix[tok.kind_of_id[w.tokens[:-1]], w.tokens[1:]].all()
            assert w.tokens[: w.ctx_len].tolist()[-20:] == tokens[bars[split] - 20:bars[split]].tolist()
            n_checked += 1
    assert n_checked > 100


def test_loss_selects_exactly_the_completion(store):
    windows = store_completion_windows(store, "val", context_bars=3, completion_bars=2, stride_bars=2, max_len=300)
    batch = collate(windows[:7])
    ids, mask, ctx = batch["input_ids"], batch["attention_mask"], batch["ctx_lengths"]
    assert ctx.tolist() == [w.ctx_len for w in windows[:7]]
    assert (ids[mask == 0] == 0).all() and mask.sum(1).tolist() == [len(w.tokens) for w in windows[:7]]
    selected = completion_mask(ids, ctx, mask)
    targets = shifted_targets(ids)[selected]
    assert targets.tolist() == np.concatenate([w.completion for w in windows[:7]]).tolist()
    # position ctx_len - 1 predicts the first completion token
    for row, w in enumerate(windows[:7]):
        first = int(selected[row].nonzero()[0])
        assert first == w.ctx_len - 1
    vocab = store.tokenizer.vocab_size
    logits = torch.randn(ids.shape[0], ids.shape[1], vocab)
    assert torch.isfinite(completion_loss(logits, ids, selected))
    with pytest.raises(RuntimeError, match="same mask"):
        completion_loss(logits[selected][:-1], ids, selected)


def test_max_len_drops_old_bars_first_and_ctx_len_follows(store):
    tok = store.tokenizer
    piece = max(store.pieces(), key=lambda p: p.length)
    tokens, bars = np.asarray(store.tokens(piece)), np.asarray(store.bars(piece))
    args = dict(context_bars=8, completion_bars=2, stride_bars=4)
    full = {w.completion_bar: w for w in completion_windows(tokens, bars, tok, max_len=100_000, **args)}
    short = completion_windows(tokens, bars, tok, max_len=400, **args)
    assert short and any(w.start_bar > w.completion_bar - 8 for w in short)
    for s in short:
        f = full[s.completion_bar]
        assert len(s.tokens) <= 400
        assert s.ctx_len == len(s.tokens) - len(s.completion) > 0
        assert tok.token_kind(int(s.tokens[s.ctx_len])) in ("Bar", "Position")
        assert np.array_equal(s.completion, f.completion[: len(s.completion)])  # cut only at its end
        if s.start_bar > f.start_bar:
            # old bars went one at a time, no more than needed: one bar more would not fit
            longer = completion_windows(tokens, bars[s.start_bar - 1:], tok, context_bars=s.completion_bar - s.start_bar + 1,
                                        completion_bars=2, stride_bars=100, max_len=100_000)[0]
            assert len(longer.tokens) > 400
        assert s.tokens[: s.ctx_len].tolist()[-5:] == f.tokens[: f.ctx_len].tolist()[-5:]


def test_state_is_reinserted_where_remi_puts_it():
    tok = PianoTokenizer()
    score = symusic.Score(480)
    score.time_signatures.append(symusic.TimeSignature(0, 3, 4))
    score.tempos.append(symusic.Tempo(0, 80.0))
    score.tempos.append(symusic.Tempo(2 * 1440 + 480, 160.0))  # bar 2, second beat
    track = symusic.Track("piano", 0, False)
    for beat in range(5 * 3):
        track.notes.append(symusic.Note(beat * 480, 400, 60 + beat % 12, 80))
    score.tracks.append(track)
    ids, bars = tok.encode_with_bars(score)
    tokens = np.array(ids)
    kinds = lambda seq: [tok.token_str(int(t)) for t in seq]  # noqa: E731
    windows = {w.start_bar: w for w in completion_windows(tokens, bars, tok, context_bars=1, completion_bars=1, stride_bars=1)}
    tempo80, tempo160 = tokens[np.flatnonzero(tok.kind_of_id[tokens] == tok.kinds.index("Tempo"))][:2]
    # bar 2 sets its own tempo on beat 2: the tempo in force (80) goes in at Position_0 first
    assert kinds(windows[2].tokens[:6]) == ["BOS_None", "Bar_None", "TimeSig_3/4", "Position_0", tok.token_str(int(tempo80)), "Pitch_66"]
    # bar 3 has no tempo of its own: the one set in bar 2 (160) is in force
    assert kinds(windows[3].tokens[:5]) == ["BOS_None", "Bar_None", "TimeSig_3/4", "Position_0", tok.token_str(int(tempo160))]
    decoded = tok.decode(windows[3].tokens)
    assert decoded.tempos[0].time == 0 and abs(decoded.tempos[0].qpm - 160) < 10
    assert (decoded.time_signatures[0].numerator, decoded.time_signatures[0].denominator) == (3, 4)
    # a bar without its TimeSig gets the one in force right after Bar
    bar, ts, pos0, pitch = (tok.token_id(t) for t in ("Bar_None", "TimeSig_3/4", "Position_0", "Pitch_60"))
    hand = np.array([bar, ts, pos0, tempo80, pitch, bar, tok.token_id("Position_8"), pitch])
    head, replaced = state_prefix(hand, 5, _StateTokens(tok))
    assert head == [bar, ts, pos0, int(tempo80)] and replaced == 1


def test_packed_chunks_have_no_padding_and_mark_documents(store):
    tok = store.tokenizer
    chunks = store_packed_chunks(store, "train", 512)
    docs = [np.asarray(store.tokens(p)) for p in store.pieces("train")]
    stream = np.concatenate([np.concatenate([[tok.bos_id], d, [tok.eos_id]]) for d in docs])
    assert len(chunks) == len(stream) // 512
    assert np.array_equal(np.concatenate([c.tokens for c in chunks]), stream[: 512 * len(chunks)])
    for c in chunks:
        assert len(c.tokens) == 512 and c.doc_starts[0] == 0 and (c.tokens != tok.pad_id).all()
        assert all(c.tokens[s] == tok.bos_id for s in c.doc_starts[1:])
        assert (c.tokens == tok.bos_id).sum() == len(c.doc_starts) - (c.tokens[0] != tok.bos_id)
    batch = collate(chunks[:3])
    assert batch["input_ids"].shape == (1, 3 * 512)
    cu = batch["cu_seqlens"].tolist()
    assert cu[0] == 0 and cu[-1] == 3 * 512 and cu == sorted(cu) and {512, 1024} <= set(cu)
    tail = packed_chunks([np.arange(3, 10)], 4, keep_tail=True)
    assert [c.tokens.tolist() for c in tail] == [[1, 3, 4, 5], [6, 7, 8, 9], [2]]


def test_validation_windows_come_only_from_validation_pieces(store):
    val_pieces = {p.index for p in store.pieces("val")}
    train = store_completion_windows(store, "train", context_bars=2, completion_bars=2, stride_bars=2)
    val = store_completion_windows(store, "val", context_bars=2, completion_bars=2, stride_bars=2)
    assert val and train
    assert {w.piece for w in val} <= val_pieces and not {w.piece for w in train} & val_pieces

"""Likelihood, validity and continuations on real corpus pieces with the real tokenizer and tiny models."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.data.tokenizer import PianoTokenizer
from engine.eval.continuations import (
    SamplingOptions,
    added_notes,
    bar_starts,
    choose_windows,
    decode_continuation,
    generate_continuations,
    windows_of_piece,
)
from engine.eval.likelihood import LikelihoodResult, count_notes, evaluate_likelihood, sequence_nats
from engine.eval.metrics import Performance
from engine.eval.validity import check_continuation, grammar_violations
from engine.model import RWKV7, ModelConfig
from engine.paths import CORPUS_DIR

PIECE = CORPUS_DIR / "piano" / "bach_bwv846_prelude.mid"


@pytest.fixture(autouse=True)
def one_torch_thread():
    # tiny matrices: a second thread only adds contention on a shared 2-core runner
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer():
    return PianoTokenizer()


@pytest.fixture(scope="module")
def piece(tokenizer):
    return [tokenizer.bos_id, *tokenizer.encode_file(PIECE), tokenizer.eos_id]


def tiny_model(vocab_size: int, seed: int = 0) -> RWKV7:
    torch.manual_seed(seed)
    return RWKV7(ModelConfig(arch="x080", n_layer=2, n_embd=64, vocab_size=vocab_size, head_size=32)).eval()


def test_chunked_scoring_equals_one_pass(tokenizer, piece):
    model = tiny_model(tokenizer.vocab_size)
    tokens = piece[:160]
    whole, n = sequence_nats(model, tokens, chunk_len=10_000)
    chunked, n2 = sequence_nats(model, tokens, chunk_len=37)  # state carries over chunk borders
    assert n == n2 == 159
    assert chunked == pytest.approx(whole, rel=1e-4)


def test_uniform_model_scores_log_vocab_per_token(tokenizer, piece):
    model = tiny_model(tokenizer.vocab_size)
    with torch.no_grad():
        model.head.weight.zero_()  # every logit 0: the uniform distribution
    result = evaluate_likelihood(model, tokenizer, [piece], max_tokens=500)
    V = tokenizer.vocab_size
    assert result.tokens == 500 and result.pieces == 1
    assert result.nats_per_token == pytest.approx(math.log(V), rel=1e-5)
    assert result.bits_per_token == pytest.approx(math.log2(V), rel=1e-5)
    notes = count_notes(piece[1:501], tokenizer)
    assert result.notes == notes > 0
    assert result.bits_per_note == pytest.approx(math.log2(V) * 500 / notes, rel=1e-5)
    assert result.seconds > 0 and result.bits_per_second == pytest.approx(result.bits / result.seconds)


def test_notes_counted_from_pitch_tokens_match_the_decoded_piece(tokenizer, piece):
    decoded = Performance.from_score(tokenizer.decode(piece))
    assert count_notes(piece, tokenizer) == decoded.n_notes == Performance.from_midi(PIECE).n_notes


def test_likelihood_result_handles_empty_totals():
    empty = LikelihoodResult(nats=0.0, tokens=0, notes=0, seconds=0.0, pieces=0)
    d = empty.to_dict()
    assert all(math.isnan(d[k]) for k in ("nats_per_token", "bits_per_note", "bits_per_second"))


def test_real_music_breaks_no_grammar_rule_and_scrambled_tokens_do(tokenizer, piece):
    assert grammar_violations(piece[:-1], tokenizer) == 0
    rng = np.random.default_rng(0)
    scrambled = rng.permutation(piece[1:200]).tolist()
    assert grammar_violations(scrambled, tokenizer) > 20
    assert grammar_violations([tokenizer.vocab_size + 5], tokenizer) == 1


def test_a_note_without_its_release_is_stuck(tokenizer, piece):
    starts = bar_starts(piece, tokenizer)
    prompt, rest = piece[: starts[2]], piece[starts[2]: starts[3]]
    kinds = [tokenizer.token_kind(t) for t in rest]
    last_pitch = max(i for i, k in enumerate(kinds) if k == "Pitch")
    cut = rest[: last_pitch + 1]  # ends on a Pitch: its Velocity and Duration never come
    perf = decode_continuation(tokenizer, prompt, cut)
    check = check_continuation(cut, tokenizer, perf, previous=prompt[-1])
    assert check.decoded and check.invalid_tokens == 0
    assert check.notes_unreleased == 1 and check.stuck_notes == 1
    whole = check_continuation(rest, tokenizer, decode_continuation(tokenizer, prompt, rest), previous=prompt[-1])
    assert whole.stuck_notes == 0 and whole.notes_started == kinds.count("Pitch")


def test_windows_follow_bar_starts():
    tokens = list(range(100))
    starts = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    w = windows_of_piece("p", tokens, starts, prompt_bars=2, bars=3)
    assert [(x.start_bar, len(x.prompt), len(x.real)) for x in w] == [(0, 20, 30), (5, 20, 30)]
    assert w[1].prompt == list(range(50, 70)) and w[1].real == list(range(70, 100))
    # a piece too short for prompt + one bar gives no window
    assert windows_of_piece("p", tokens[:15], [0, 10], prompt_bars=2, bars=3) == []


def test_choose_windows_spreads_over_pieces():
    pieces = [(f"p{i}", list(range(200)), list(range(0, 200, 10))) for i in range(3)]
    chosen = choose_windows(pieces, 5, prompt_bars=2, bars=2, seed=1)
    assert len(chosen) == 5
    assert sorted(w.piece for w in chosen[:3]) == ["p0", "p1", "p2"]  # every piece once before any twice
    assert {w.start_bar for w in chosen[:3]} == {0}


def test_added_notes_keeps_only_the_continuation():
    prompt = Performance.from_notes([(0, 1, 60, 80), (1, 1, 62, 80)], pedals=[(0, 2)])
    whole = Performance.from_notes([(0, 1, 60, 80), (1, 1, 62, 80), (2, 1, 64, 80), (2, 1, 60, 80)], pedals=[(0, 2), (2, 1)])
    added = added_notes(prompt, whole)
    assert sorted(added.pitch.tolist()) == [60, 64]
    np.testing.assert_allclose(added.pedal_time, [2.0])


def test_real_continuation_decodes_to_the_notes_of_its_bars(tokenizer, piece):
    starts = bar_starts(piece, tokenizer)
    prompt, real = piece[: starts[4]], piece[starts[4]: starts[12]]
    perf = decode_continuation(tokenizer, prompt, real)
    assert perf.n_notes == count_notes(real, tokenizer) > 0
    before = Performance.from_score(tokenizer.decode(prompt))
    assert perf.onset.min() > before.onset.max()


@pytest.mark.parametrize("grammar", [True, False])
def test_generated_continuations_stop_after_their_bars(tokenizer, piece, grammar):
    model = tiny_model(tokenizer.vocab_size, seed=3)
    starts = bar_starts(piece, tokenizer)
    prompts = [piece[: starts[2]], piece[: starts[3]]]
    options = SamplingOptions(seed=0, grammar=grammar)
    out = generate_continuations(model, tokenizer, prompts, bars=2, max_new_tokens=[60, 6], options=options)
    bar = set(tokenizer.kind_ids("Bar"))
    assert len(out[1]) <= 9  # the cap, plus at most the rest of a note the session finishes
    for prompt, gen in zip(prompts, out):
        assert 0 < len(gen) and sum(t in bar for t in gen) <= 2
        assert tokenizer.pad_id not in gen and tokenizer.bos_id not in gen
    violations = sum(grammar_violations(g, tokenizer, previous=p[-1]) for p, g in zip(prompts, out))
    if grammar:
        assert violations == 0
    else:
        assert violations > 0  # a random model sampled freely breaks the grammar
    # the same seed draws the same continuations
    assert generate_continuations(model, tokenizer, prompts, bars=2, max_new_tokens=[60, 6], options=options) == out

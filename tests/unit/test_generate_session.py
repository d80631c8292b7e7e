"""GenerationSession on tiny random-weight RWKV-7 models with the real PianoTokenizer."""
from __future__ import annotations

import pytest
import torch

from engine.data.tokenizer import PianoTokenizer
from engine.generate import GenerationError, GenerationSession, SamplingConfig, prompt_from_file
from engine.midi import NoteTracker
from engine.model import RWKV7, ModelConfig
from engine.paths import CORPUS_DIR

PROMPT = CORPUS_DIR / "piano" / "bach_bwv846_prelude.mid"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models step fastest on one thread, and a shared 2-core machine punishes thread pools.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def remi():
    return PianoTokenizer("REMI")


@pytest.fixture(scope="module")
def tsd():
    return PianoTokenizer("TSD")


def random_model(tokenizer, seed: int, scale: float = 1.0) -> RWKV7:
    torch.manual_seed(seed)
    model = RWKV7(ModelConfig(n_layer=2, n_embd=64, head_size=32, vocab_size=tokenizer.vocab_size)).eval()
    with torch.no_grad():  # sharpen the output so random models make varied, peaky choices
        model.head.weight.mul_(scale)
    return model


def kind_sequence_is_grammatical(tokenizer, prev_kind: str, ids: list[int]) -> bool:
    for token in ids:
        kind = tokenizer.token_kind(token)
        if kind not in tokenizer.grammar_next_kinds(prev_kind):
            return False
        prev_kind = kind
    return True


@pytest.mark.parametrize("tokenization", ["REMI", "TSD"])
@pytest.mark.slow
def test_five_hundred_random_generations_per_tokenizer_all_decode_with_nothing_stuck(tokenization, remi, tsd):
    """1,000 random-weight generations in all (2 tokenizers x 5 models x 100 alternatives)."""
    tok = remi if tokenization == "REMI" else tsd
    for model_seed in range(5):
        model = random_model(tok, model_seed, scale=4.0)
        session = GenerationSession(model, tok, SamplingConfig(temperature=1.3, top_p=1.0, seed=model_seed), alternatives=100, max_tokens=48, bars=8)
        session.prefill()
        session.run()
        tails = session.finish()
        for r, row in enumerate(session.rows):
            ids = row.tokens
            assert row.stop_reason in ("bars", "eos", "max_tokens") and len(ids) <= 48
            assert kind_sequence_is_grammatical(tok, "BOS", ids)
            score = session.score(r)
            decoded = [(n.time, n.duration, n.pitch, n.velocity) for t in score.tracks for n in t.notes]
            streamed = [(n.onset, n.duration, n.pitch, n.velocity) for n in row.decoder.notes]
            assert decoded == streamed  # every streamed note is exactly a decoded note
            n_pitch = sum(tok.token_kind(t) == "Pitch" for t in ids)
            assert len(decoded) == n_pitch  # no Pitch left without its velocity and duration
            assert all(d > 0 for _, d, _, _ in decoded)
            events = session.events(r)
            times = [e.time for e in events]
            assert times == sorted(times)
            tracker = NoteTracker()
            for e in events:
                tracker.observe(e.data, 0.0)
            assert tracker.count == 0 and not tracker.sustain_down  # stuck-note rate 0
            assert tails[r] == events[len(events) - len(tails[r]):]


def test_alternatives_differ_and_a_seed_reproduces(remi):
    model = random_model(remi, 11, scale=3.0)
    runs = []
    for seed in (5, 5, 6):
        session = GenerationSession(model, remi, SamplingConfig(seed=seed, temperature=1.0), alternatives=3, max_tokens=40)
        session.prefill(prompt_from_file(PROMPT, remi, "2"))
        session.run()
        runs.append([session.tokens(r) for r in range(3)])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert len({tuple(t) for t in runs[0]}) == 3


def test_rewind_to_a_bar_replays_the_same_continuation_and_a_new_seed_tries_again(remi):
    model = random_model(remi, 3, scale=2.0)
    session = GenerationSession(model, remi, SamplingConfig(seed=42, temperature=0.9), alternatives=2, bars=6, max_tokens=160)
    session.prefill(prompt_from_file(PROMPT, remi, "1"))
    session.run()
    first = [session.tokens(r) for r in range(2)]
    first_events = [session.events(r) for r in range(2)]
    bars = [b for b in session.snapshot_bars(0) if b > 0]
    assert bars, "the run must have crossed at least one bar line"
    bar = bars[0]
    cut = session.rows[0].snapshots[bar].tokens
    session.rewind(bar, rows=[0])
    assert session.tokens(0) == first[0][:cut]
    assert session.tokens(1) == first[1]  # the other alternative is untouched
    session.run()
    assert session.tokens(0) == first[0]
    assert session.events(0) == first_events[0]
    session.rewind(bar, rows=[0], seed=777)
    session.run()
    assert session.tokens(0)[:cut] == first[0][:cut] and session.tokens(0) != first[0]
    idea = session.branch(0, bar, alternatives=2, seed=9)
    idea.run()
    assert idea.prompt[-cut:] == first[0][:cut] and idea.tokens(0) != idea.tokens(1)


def test_bars_stop_counts_bar_lines(remi, tsd):
    for tok in (remi, tsd):
        model = random_model(tok, 21, scale=1.0)
        session = GenerationSession(model, tok, SamplingConfig(seed=1), alternatives=4, bars=2, max_tokens=2000)
        session.prefill()
        session.run()
        for row in session.rows:
            assert row.stop_reason in ("bars", "eos")
            assert row.bars <= 2
            if tok is remi:
                assert sum(tok.token_kind(t) == "Bar" for t in row.tokens) <= 2


def test_prefill_then_step_equals_stepping_token_by_token(remi):
    model = random_model(remi, 4)
    prompt = [remi.bos_id] + prompt_from_file(PROMPT, remi, "1")
    with torch.no_grad():
        logits_par, state_par = model(torch.tensor([prompt]), return_state=True)
        state = model.init_state(1)
        for token in prompt:
            logits_seq, state = model.step(torch.tensor([token]), state)
    torch.testing.assert_close(state_par.wkv, state.wkv, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state_par.att_shift, state.att_shift, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state_par.ffn_shift, state.ffn_shift, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits_par[:, -1], logits_seq, atol=1e-4, rtol=1e-4)
    session = GenerationSession(model, remi, alternatives=2, max_tokens=4)
    session.prefill(prompt[1:])
    torch.testing.assert_close(session.state.wkv[:, 1], state.wkv[:, 0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(session.logits[0], logits_seq[0].float(), atol=1e-4, rtol=1e-4)


def test_prompt_bar_ranges_keep_tempo_and_bad_input_is_one_sentence(remi, tmp_path):
    whole, bars = remi.encode_with_bars(__import__("symusic").Score(str(PROMPT)))
    last2 = prompt_from_file(PROMPT, remi, "2")
    assert remi.token_kind(last2[0]) == "Bar" and remi.token_kind(last2[1]) == "TimeSig"
    assert any(remi.token_kind(t) == "Tempo" for t in last2[:5])
    assert remi.decode(last2).tracks[0].notes
    middle = prompt_from_file(PROMPT, remi, "3-4")
    assert sum(remi.token_kind(t) == "Bar" for t in middle) == 2
    assert prompt_from_file(PROMPT, remi, None) == whole
    with pytest.raises(GenerationError, match="bad bar range"):
        prompt_from_file(PROMPT, remi, "x-2")
    with pytest.raises(GenerationError, match="does not exist"):
        prompt_from_file(PROMPT, remi, f"{len(bars) + 5}-")
    with pytest.raises(GenerationError, match="does not exist"):
        prompt_from_file(tmp_path / "missing.mid", remi)
    broken = tmp_path / "broken.mid"
    broken.write_bytes(b"MThd not really")
    with pytest.raises(GenerationError, match="cannot be used: truncated: the header declares"):
        prompt_from_file(broken, remi)  # the same reason `check` gives


def test_a_model_with_another_vocabulary_is_refused(remi, tsd):
    with pytest.raises(GenerationError, match="vocabulary"):
        GenerationSession(random_model(tsd, 0), remi)


def test_old_bar_snapshots_are_dropped_but_the_start_is_kept(tsd):
    model = random_model(tsd, 5)
    session = GenerationSession(model, tsd, SamplingConfig(seed=2), alternatives=1, bars=12, max_tokens=3000, max_snapshots=3)
    session.prefill()
    session.run()
    kept = session.snapshot_bars(0)
    assert len(kept) == 3 and kept[0] == 0 and kept[1:] == sorted(kept[1:]) and kept[-1] <= 12
    dropped = next(b for b in range(1, kept[-1]) if b not in kept)
    with pytest.raises(GenerationError, match="no snapshot for bar"):
        session.rewind(dropped)


def test_prefill_is_one_parallel_pass_and_each_step_is_one_batched_rnn_call(remi):
    model = random_model(remi, 6)
    prompt = prompt_from_file(PROMPT, remi, "2")
    forward_lengths, step_batches = [], []
    forward, step = model.forward, model.step

    def counting_forward(idx, *args, **kwargs):
        forward_lengths.append(tuple(idx.shape))
        return forward(idx, *args, **kwargs)

    def counting_step(tokens, state):
        step_batches.append(tuple(tokens.shape))
        return step(tokens, state)

    model.forward, model.step = counting_forward, counting_step
    session = GenerationSession(model, remi, SamplingConfig(seed=3), alternatives=4, max_tokens=12)
    session.prefill(prompt)
    assert forward_lengths == [(1, len(prompt) + 1)] and step_batches == []  # BOS + prompt in one pass
    assert session.state.batch_size == 4  # the prompt's state carried into K recurrent rows
    session.run()
    assert len(forward_lengths) == 1  # generation never re-reads the prompt
    assert step_batches and set(step_batches) == {(4,)}  # all K alternatives advance in one call
    assert len(step_batches) == max(len(session.tokens(r)) for r in range(4))


def eager_to_end(remi) -> RWKV7:
    """A model that wants its end token after every token."""
    model = random_model(remi, 8)
    with torch.no_grad():  # every hidden state leans one way and EOS points along it
        axis = torch.zeros(model.config.n_embd)
        axis[0] = 1.0
        model.ln_out.bias.copy_(4 * axis)
        model.head.weight[remi.eos_id] = 8 * axis
    return model


def test_a_model_that_ends_the_piece_stops_at_its_end_token_when_an_early_end_is_allowed(remi):
    session = GenerationSession(eager_to_end(remi), remi, SamplingConfig(seed=1), alternatives=3, bars=16, max_tokens=500,
                                allow_early_end=True)
    session.prefill(prompt_from_file(PROMPT, remi, "1"))  # after a prompt's note, EOS is grammatical at once
    session.run()
    for r, row in enumerate(session.rows):
        assert row.stop_reason == "eos" and session.ended_early(r)
        assert session.tokens(r)[-1] == remi.eos_id and session.tokens(r).count(remi.eos_id) == 1
    before = [session.tokens(r) for r in range(3)]
    session.step()  # a finished session draws nothing more
    assert [session.tokens(r) for r in range(3)] == before


@pytest.mark.parametrize("tokenization", ["REMI", "TSD"])
def test_bars_are_honoured_even_by_a_model_that_wants_to_end(tokenization, remi, tsd):
    tok = remi if tokenization == "REMI" else tsd
    model = eager_to_end(remi) if tok is remi else random_model(tsd, 8)
    if tok is tsd:
        with torch.no_grad():
            axis = torch.zeros(model.config.n_embd)
            axis[0] = 1.0
            model.ln_out.bias.copy_(4 * axis)
            model.head.weight[tsd.eos_id] = 8 * axis
    session = GenerationSession(model, tok, SamplingConfig(seed=2), alternatives=2, bars=3, max_tokens=4000)
    session.prefill(prompt_from_file(PROMPT, tok, "1"))
    session.run()
    for r, row in enumerate(session.rows):
        assert tok.eos_id not in session.tokens(r)
        assert row.stop_reason == "bars" and row.bars == 3 and not session.ended_early(r)

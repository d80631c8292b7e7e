"""The sampler's filters, penalties, masks and seeds."""
from __future__ import annotations

import math

import pytest
import torch

from engine.generate import SamplingConfig, filter_logits, sample_rows
from engine.generate.sampling import apply_penalties

LOGITS = torch.log(torch.tensor([[0.4, 0.3, 0.15, 0.1, 0.05]]))
ALL = torch.ones(1, 5, dtype=torch.bool)


def kept(config: SamplingConfig, allowed=ALL) -> list[int]:
    return torch.isfinite(filter_logits(LOGITS, allowed, config))[0].nonzero().flatten().tolist()


def test_top_k_top_p_min_p_keep_the_documented_sets():
    assert kept(SamplingConfig(top_p=1.0, top_k=2)) == [0, 1]
    assert kept(SamplingConfig(top_p=0.7)) == [0, 1]  # 0.4 + 0.3 reaches 0.7
    assert kept(SamplingConfig(top_p=0.71)) == [0, 1, 2]
    assert kept(SamplingConfig(top_p=0.1)) == [0]  # the likeliest token always stays
    assert kept(SamplingConfig(top_p=1.0, min_p=0.3)) == [0, 1, 2]  # p >= 0.12
    assert kept(SamplingConfig(top_p=1.0)) == [0, 1, 2, 3, 4]


def test_temperature_sharpens_and_zero_is_greedy():
    cold = torch.softmax(filter_logits(LOGITS, ALL, SamplingConfig(temperature=0.5, top_p=1.0)), -1)
    assert cold[0, 0] > 0.4 and math.isclose(float(cold.sum()), 1.0, rel_tol=1e-6)
    greedy = SamplingConfig(temperature=0)
    mask = torch.tensor([[False, True, True, True, True]])
    assert sample_rows(LOGITS, mask, greedy, [torch.Generator()], [[]]) == [1]


def test_masked_tokens_are_never_drawn_and_seeds_reproduce():
    config = SamplingConfig(top_p=1.0, temperature=1.5)
    mask = torch.tensor([[False, True, False, True, True]])

    def draws(seed):
        gen = torch.Generator()
        gen.manual_seed(seed)
        return [sample_rows(LOGITS, mask, config, [gen], [[]])[0] for _ in range(400)]

    a = draws(1)
    assert set(a) == {1, 3, 4}
    assert a == draws(1) and a != draws(2)


def test_penalties_lower_recent_tokens_only():
    config = SamplingConfig(repetition_penalty=2.0, presence_penalty=0.5)
    logits = torch.tensor([[2.0, -1.0, 1.0, 0.5]])
    out = apply_penalties(logits, [[0, 1, 0]], config)
    assert out.tolist() == [[2.0 / 2 - 0.5, -1.0 * 2 - 0.5, 1.0, 0.5]]


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(min_p=1.0), dict(top_k=-2), dict(repetition_penalty=0)])
def test_bad_settings_raise_one_clear_sentence(bad):
    with pytest.raises(ValueError, match="must be"):
        SamplingConfig(**bad)


def test_generation_auditions_and_eval_draw_with_the_one_sampler(monkeypatch):
    """The model wrapper's generate, training auditions and free eval sampling all go through sample_rows."""
    import engine.generate.sampling as sampling
    from engine.eval.continuations import SamplingOptions, _generate_free
    from engine.model import RWKV7, ModelConfig
    from engine.model.pianomuse import sample_logits
    from engine.train.audition import continue_prompt

    calls = []
    real = sampling.sample_rows
    monkeypatch.setattr(sampling, "sample_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    model = RWKV7(ModelConfig(n_layer=1, n_embd=64, head_size=32, vocab_size=40)).eval()
    sample_logits(torch.randn(40), generator=torch.Generator().manual_seed(1))
    assert len(calls) == 1
    new = continue_prompt(model, [1, 5, 6], 4, temperature=1.0, top_p=0.95, seed=3, banned=(0, 1))
    assert len(calls) == 1 + len(new) and not {0, 1} & set(new)

    class Tok:
        vocab_size, pad_id, bos_id, eos_id = 40, 0, 1, 2

        def kind_ids(self, kind):
            return []

    before = len(calls)
    _generate_free(model, Tok(), [[1, 5, 6]], 2, [3], SamplingOptions(seed=0), None)
    assert len(calls) > before


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_model_output_is_one_clear_error(bad):
    """A checkpoint whose state overflows on a long sequence gives NaN/inf logits: the sampler says so
    (torch.multinomial's own error names no cause), whatever the mask and the temperature."""
    from engine.generate.sampling import NonFiniteLogits

    logits = torch.randn(2, 10)
    logits[1, 3] = bad
    allowed = torch.ones(2, 10, dtype=torch.bool)
    allowed[1, 3] = False  # masked away or not, the model itself has diverged
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    for temperature in (0.0, 1.0):
        with pytest.raises(NonFiniteLogits, match="state overflowed"):
            sample_rows(logits, allowed, SamplingConfig(temperature=temperature), gens, [[], []])
    logits[1, 3] = 0.0
    assert len(sample_rows(logits, allowed, SamplingConfig(), gens, [[], []])) == 2

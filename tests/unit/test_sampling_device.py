"""The device sampler (``pick_tokens``, what runs in a captured CUDA graph on a GPU) against the
reference sampler: for given uniforms it picks exactly the token the inverse CDF over
``filter_logits``'s distribution picks, on fresh random logits, for every setting and edge case.
Runs on the CPU (the same tensor ops); tests/integration/test_model_gpu.py repeats it on a GPU."""
from __future__ import annotations

import math

import pytest
import torch

from engine.generate import SamplingConfig, filter_logits
from engine.generate.sampling import (
    NonFiniteLogits,
    inverse_cdf,
    pick_tokens,
    row_uniforms,
    sample_rows_on_device,
    sampling_knobs,
)

SETTINGS = [
    SamplingConfig(),
    SamplingConfig(top_p=1.0),
    SamplingConfig(temperature=0.7, top_p=0.9, top_k=20),
    SamplingConfig(temperature=1.3, top_p=0.5, min_p=0.05),
    SamplingConfig(temperature=1e-4, top_p=0.95),  # nearly greedy
    SamplingConfig(temperature=0.0),  # greedy
    SamplingConfig(top_k=1, top_p=1.0),
    SamplingConfig(top_k=400, top_p=0.3),  # k >= V: no cut
]


def reference_pick(logits, allowed, config, u):
    """The reference: ``filter_logits`` (greedy at temperature 0), then the inverse CDF."""
    filtered = filter_logits(logits, allowed, config)
    if config.temperature == 0:
        return filtered.argmax(dim=-1)
    return inverse_cdf(torch.softmax(filtered, dim=-1), u)


def fresh(seed, B=4, V=300):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, V, generator=g) * (1 + 4 * torch.rand(B, 1, generator=g))
    allowed = torch.rand(B, V, generator=g) < 0.7
    allowed[:, int(torch.randint(0, V, (1,), generator=g))] = True  # every row keeps a token
    return logits, allowed, torch.rand(B, generator=g)


@pytest.mark.parametrize("config", SETTINGS, ids=lambda c: f"t{c.temperature}-k{c.top_k}-p{c.top_p}-m{c.min_p}")
def test_device_pick_equals_the_reference_pick(config):
    for seed in range(40):
        logits, allowed, u = fresh(seed)
        got = pick_tokens(logits, allowed, u, sampling_knobs(config))
        assert torch.equal(got, reference_pick(logits, allowed, config, u)), seed
        assert bool(allowed.gather(1, got.unsqueeze(1)).all())  # never a masked token


def test_ties_and_u_at_the_edges():
    logits = torch.zeros(3, 8)  # ties everywhere
    allowed = torch.ones(3, 8, dtype=torch.bool)
    allowed[:, 0] = allowed[:, 5:] = False
    u = torch.tensor([0.0, 0.5, 1.0 - 2**-24])  # torch.rand's range is [0, 1)
    for config in (SamplingConfig(top_p=1.0), SamplingConfig(top_p=0.6), SamplingConfig(top_k=2, top_p=1.0), SamplingConfig(temperature=0)):
        got = pick_tokens(logits, allowed, u, sampling_knobs(config))
        assert torch.equal(got, reference_pick(logits, allowed, config, u))
        assert set(got.tolist()) <= {1, 2, 3, 4}
    # four equal tokens, u sweeping [0, 1): each quarter picks the next one
    picks = pick_tokens(logits[:1].expand(8, -1), allowed[:1].expand(8, -1), torch.arange(8) / 8, sampling_knobs(SamplingConfig(top_p=1.0)))
    assert picks.tolist() == [1, 1, 2, 2, 3, 3, 4, 4]


def test_inverse_cdf_draws_the_distribution():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2]])
    u = torch.rand(20000, generator=torch.Generator().manual_seed(3))
    counts = torch.bincount(inverse_cdf(probs.expand(len(u), -1), u), minlength=4).float() / len(u)
    assert counts[1] == 0
    torch.testing.assert_close(counts, probs[0], atol=0.015, rtol=0)


def test_rows_reproduce_from_their_seeds_and_non_finite_logits_raise():
    logits, allowed, _ = fresh(7, B=3)
    config = SamplingConfig(temperature=1.1, top_p=0.9)

    def run(seed):
        gens = [torch.Generator().manual_seed(seed + r) for r in range(3)]
        return [sample_rows_on_device(logits, allowed, config, gens, [[], [], []]) for _ in range(20)]

    assert run(5) == run(5) and run(5) != run(6)
    gens = [torch.Generator().manual_seed(1) for _ in range(3)]
    assert torch.equal(row_uniforms(gens, SamplingConfig(temperature=0)), torch.zeros(3))  # greedy draws none
    bad = logits.clone()
    bad[1, 4] = math.nan
    with pytest.raises(NonFiniteLogits, match="not finite"):
        sample_rows_on_device(bad, allowed, config, gens, [[], [], []])


def test_penalties_reach_the_device_pick():
    logits = torch.tensor([[3.0, 0.0, -5.0]])
    allowed = torch.ones(1, 3, dtype=torch.bool)
    config = SamplingConfig(temperature=0, presence_penalty=10.0)
    assert sample_rows_on_device(logits, allowed, config, [torch.Generator()], [[0]]) == [1]

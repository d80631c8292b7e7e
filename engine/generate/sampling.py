"""Sampling next tokens: penalties over a window, grammar mask, temperature, top-k, top-p, min-p.

Each row draws with its own torch.Generator, so a row's continuation depends only on its own seed
and history: rewinding one alternative replays it exactly while the others keep going.

On CUDA the draw runs on the GPU (``pick_tokens``, replayed from a captured CUDA graph): the same
filters over the same logits as ``filter_logits``, knobs as tensors instead of Python branches,
then the inverse CDF at one uniform per row drawn from that row's generator, so only the picked
token ids come back to the host, never the logits. A run is reproducible from its seed on either
device; a CPU run and a GPU run with one seed draw differently (multinomial vs inverse CDF).
"""
from __future__ import annotations

import math
import warnings

import torch

from .defaults import DEFAULT_BARS, SamplingConfig  # noqa: F401  (re-exported: the sampler's config)


class NonFiniteLogits(ValueError):
    """The model's output held NaN or inf: its recurrent state overflowed (an unstable checkpoint)."""


def row_seed(seed: int, row: int) -> int:
    """Independent, reproducible stream per alternative."""
    return (seed * 1_000_003 + row * 7919) % (2**63 - 1)


def apply_penalties(logits: torch.Tensor, recent: list[list[int]], config: SamplingConfig) -> torch.Tensor:
    """logits [B, V]; recent[b]: the last ``penalty_window`` tokens of row b."""
    if config.repetition_penalty == 1.0 and config.presence_penalty == 0.0:
        return logits
    logits = logits.clone()
    for b, tokens in enumerate(recent):
        if not tokens:
            continue
        ids = torch.as_tensor(sorted(set(tokens)), dtype=torch.long, device=logits.device)
        seen = logits[b, ids]
        if config.repetition_penalty != 1.0:
            seen = torch.where(seen > 0, seen / config.repetition_penalty, seen * config.repetition_penalty)
        logits[b, ids] = seen - config.presence_penalty
    return logits


def filter_logits(logits: torch.Tensor, allowed: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Masked, temperature-scaled, truncated logits [B, V] (-inf where a token may not be drawn)."""
    logits = logits.float().masked_fill(~allowed, -math.inf)
    if config.temperature == 0:
        return logits
    logits = logits / config.temperature
    if config.top_k > 0 and config.top_k < logits.shape[-1]:
        logits = _below(logits, torch.topk(logits, config.top_k, dim=-1).values[:, -1:])
    probs = torch.softmax(logits, dim=-1)
    if config.top_p < 1.0:
        logits = logits.masked_fill(_outside_nucleus(probs, config.top_p), -math.inf)
    if config.min_p > 0:
        logits = logits.masked_fill(_under_min_p(probs, config.min_p), -math.inf)
    return logits


# the filters' steps, shared by ``filter_logits`` (settings as Python numbers, a step skipped when
# off) and ``filter_logits_knobs`` (settings as tensors, every step run and switched by a mask)


def _below(logits: torch.Tensor, kth: torch.Tensor) -> torch.Tensor:
    """top-k: -inf under each row's k-th largest logit ``kth`` [B, 1] (ties with it stay)."""
    return logits.masked_fill(logits < kth, -math.inf)


def _outside_nucleus(probs: torch.Tensor, top_p) -> torch.Tensor:
    """top-p: True outside the smallest prefix of the likeliest tokens whose mass reaches ``top_p``."""
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    return torch.zeros_like(before, dtype=torch.bool).scatter(-1, order, before >= top_p)


def _under_min_p(probs: torch.Tensor, min_p) -> torch.Tensor:
    """min-p: True where p < min_p * p_max."""
    return probs < min_p * probs.max(dim=-1, keepdim=True).values


KNOBS = ("temperature", "top_k", "top_p", "min_p")  # the settings ``pick_tokens`` reads, in this order


def sampling_knobs(config: SamplingConfig, device=None) -> torch.Tensor:
    """``config``'s filter settings as one fp32 tensor [4] in ``KNOBS`` order (the penalties are
    applied to the logits before, by ``apply_penalties``)."""
    return torch.tensor([float(getattr(config, name)) for name in KNOBS], dtype=torch.float32, device=device)


def filter_logits_knobs(logits: torch.Tensor, allowed: torch.Tensor, knobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``filter_logits`` with the settings as a tensor (``sampling_knobs``): no branch on a value,
    no host sync, so one captured CUDA graph serves every setting. Returns (the masked logits
    before temperature, for the greedy pick, and the filtered logits [B, V])."""
    temperature, top_k, top_p, min_p = knobs.unbind(0)
    masked = logits.float().masked_fill(~allowed, -math.inf)
    scaled = masked / torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    V = scaled.shape[-1]
    # top-k: the k-th largest logit from one sort; k = 0 or k >= V turns the cut off
    k_index = (top_k - 1).clamp(0, V - 1).long().expand(scaled.shape[0], 1)
    kth = torch.sort(scaled, dim=-1, descending=True).values.gather(-1, k_index)
    scaled = _below(scaled, torch.where((top_k > 0) & (top_k < V), kth, torch.full_like(kth, -math.inf)))
    probs = torch.softmax(scaled, dim=-1)
    drop = (_outside_nucleus(probs, top_p) & (top_p < 1.0)) | _under_min_p(probs, min_p)
    return masked, scaled.masked_fill(drop, -math.inf)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row of ``probs`` [B, V], the token where the cumulative probability first exceeds
    ``u`` [B] (in [0, 1)) times the row's total: a draw from ``probs`` for a uniform ``u``. A token
    of probability 0 is never picked (rounding that puts u past the total picks the last token
    with p > 0)."""
    cdf = torch.cumsum(probs, dim=-1)
    index = (cdf <= u.unsqueeze(-1) * cdf[:, -1:]).sum(dim=-1)
    positions = torch.arange(probs.shape[-1], device=probs.device).expand_as(probs)
    last = torch.where(probs > 0, positions, torch.zeros_like(positions)).amax(dim=-1)
    return torch.minimum(index, last)


def pick_tokens(logits: torch.Tensor, allowed: torch.Tensor, u: torch.Tensor, knobs: torch.Tensor) -> torch.Tensor:
    """The device sampler: one token id per row [B] (int64), -1 for a row whose logits are not
    finite. Greedy (temperature 0) is the masked argmax; otherwise ``inverse_cdf`` at ``u`` over
    the softmax of ``filter_logits_knobs``. Tensor ops only (captured as one CUDA graph)."""
    masked, filtered = filter_logits_knobs(logits, allowed, knobs)
    drawn = torch.where(knobs[0] > 0, inverse_cdf(torch.softmax(filtered, dim=-1), u), masked.argmax(dim=-1))
    return torch.where(torch.isfinite(logits).all(dim=-1), drawn, torch.full_like(drawn, -1))


def _check_finite(finite: bool) -> None:
    if not finite:
        raise NonFiniteLogits(
            "the model's output is not finite (NaN or inf): its recurrent state overflowed, as some "
            "checkpoints' states do on long sequences. Start again (a fresh state), or use another checkpoint")


def sample_rows(logits: torch.Tensor, allowed: torch.Tensor, config: SamplingConfig, generators: list[torch.Generator], recent: list[list[int]]) -> list[int]:
    """One token per row, never outside ``allowed``. On CUDA the draw runs on the GPU
    (``sample_rows_on_device``); elsewhere torch.multinomial with each row's generator."""
    if logits.device.type == "cuda":
        return sample_rows_on_device(logits, allowed, config, generators, recent)
    _check_finite(bool(torch.isfinite(logits).all()))
    logits = filter_logits(apply_penalties(logits, recent, config), allowed, config)
    if config.temperature == 0:
        return logits.argmax(dim=-1).tolist()
    probs = torch.softmax(logits, dim=-1).cpu()  # the row generators live on the CPU, whatever the model's device
    return [int(torch.multinomial(probs[b], 1, generator=generators[b])) for b in range(probs.shape[0])]


def row_uniforms(generators: list[torch.Generator], config: SamplingConfig) -> torch.Tensor:
    """One uniform in [0, 1) per row from that row's generator ([B] fp32, on the CPU); greedy
    sampling draws none, as the CPU sampler's greedy pick does not."""
    if config.temperature == 0:
        return torch.zeros(len(generators))
    return torch.cat([torch.rand(1, generator=g) for g in generators])


def sample_rows_on_device(logits: torch.Tensor, allowed: torch.Tensor, config: SamplingConfig,
                          generators: list[torch.Generator], recent: list[list[int]]) -> list[int]:
    """``sample_rows`` on the logits' device: ``pick_tokens`` (a captured CUDA graph on CUDA) at
    one uniform per row from its generator; only the B token ids come back to the host."""
    logits = apply_penalties(logits, recent, config)
    host_inputs = torch.cat([row_uniforms(generators, config), sampling_knobs(config)])
    picked = _device_sampler(logits).pick(logits, allowed, host_inputs)
    _check_finite(min(picked) >= 0)
    return picked


_SAMPLERS: dict = {}


def _device_sampler(logits: torch.Tensor) -> "_GraphedSampler":
    key = (tuple(logits.shape), logits.device)
    if key not in _SAMPLERS:
        if len(_SAMPLERS) >= 8:  # a handful of batch sizes at once; don't hoard graphs
            _SAMPLERS.clear()
        _SAMPLERS[key] = _GraphedSampler(logits.shape, logits.device)
    return _SAMPLERS[key]


class _GraphedSampler:
    """``pick_tokens`` over static buffers, captured as a CUDA graph on CUDA (run eagerly
    elsewhere, or where capture fails). The uniforms and knobs go in as one host-to-device
    copy, the ids come back as one device-to-host copy."""

    def __init__(self, shape, device):
        B, V = shape
        self.logits = torch.zeros(B, V, device=device)
        self.allowed = torch.ones(B, V, dtype=torch.bool, device=device)
        self.host_inputs = torch.zeros(B + len(KNOBS), device=device)
        self.graph = None
        if torch.device(device).type == "cuda":
            self.staging = torch.zeros(B + len(KNOBS), pin_memory=True)
            self.ids = torch.zeros(B, dtype=torch.long, pin_memory=True)
            try:
                self.graph = self._capture(device)
            except RuntimeError as err:  # pragma: no cover - a torch build without CUDA graphs
                warnings.warn(f"CUDA graph capture of the sampler failed, sampling eagerly: {err}", RuntimeWarning, stacklevel=3)

    def _run(self) -> torch.Tensor:
        B = self.logits.shape[0]
        return pick_tokens(self.logits, self.allowed, self.host_inputs[:B], self.host_inputs[B:])

    def _capture(self, device):
        self.host_inputs[-len(KNOBS):] = sampling_knobs(SamplingConfig(), device)
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up outside the capture (sort workspace, kernel loads)
            for _ in range(2):
                self._run()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.out = self._run()
        return graph

    def pick(self, logits: torch.Tensor, allowed: torch.Tensor, host_inputs: torch.Tensor) -> list[int]:
        self.logits.copy_(logits)
        self.allowed.copy_(allowed)
        if self.graph is None:
            self.host_inputs.copy_(host_inputs)
            return self._run().tolist()
        self.staging.copy_(host_inputs)
        self.host_inputs.copy_(self.staging, non_blocking=True)
        self.graph.replay()
        self.ids.copy_(self.out)  # waits for the replay: the one sync of a step's draw
        return self.ids.tolist()


def sample_token(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None = None,
                 banned: tuple[int, ...] = ()) -> int:
    """One token from one row of logits [V] (no grammar): ``sample_rows`` for a single row, ``banned`` never drawn."""
    allowed = torch.ones(1, logits.shape[-1], dtype=torch.bool, device=logits.device)
    if banned:
        allowed[0, list(banned)] = False
    generator = generator if generator is not None else torch.default_generator  # the global RNG, as torch.multinomial uses
    return sample_rows(logits.reshape(1, -1), allowed, config, [generator], [[]])[0]

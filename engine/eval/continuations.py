"""Prompts cut from validation pieces, the model's continuations of them, and the real ones.

A prompt is ``prompt_bars`` bars of a validation piece; the real continuation is the next
``bars`` bars; the model continues the prompt until it starts bar ``bars + 1`` (or ends the
piece, or runs out of tokens). Both continuations are decoded together with their prompt (so
tempo and time signature carry over) and only the notes that the continuation added are kept.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from engine.generate.defaults import SamplingConfig

from .metrics import Performance

# Without Bar tokens (time-shift tokenizations whose store keeps no bar starts) a "bar" is this
# many tokens: about one bar of four-note chords on a quarter-note grid.
TOKENS_PER_BAR_FALLBACK = 48


@dataclass
class PromptWindow:
    piece: str
    prompt: list[int]
    real: list[int]  # the real continuation's tokens
    start_bar: int


def bar_starts(tokens: Sequence[int], tokenizer) -> list[int]:
    """Indices of the Bar tokens (empty when the vocabulary has none)."""
    bar_ids = set(tokenizer.kind_ids("Bar"))
    return [i for i, t in enumerate(tokens) if int(t) in bar_ids]


def windows_of_piece(name: str, tokens: Sequence[int], starts: Sequence[int], prompt_bars: int, bars: int) -> list[PromptWindow]:
    """Non-overlapping (prompt, real continuation) windows of one piece, earliest first.

    ``starts`` are the token indices where bars begin. A window needs its whole prompt and at
    least one bar of real continuation; the last one may have fewer than ``bars``.
    """
    tokens = [int(t) for t in tokens]
    bounds = list(starts) + [len(tokens)]
    out = []
    bar = 0
    while bar + prompt_bars < len(bounds) - 1:
        # a prompt from the piece start keeps what precedes the first bar (BOS, tempo, ...)
        begin = 0 if bar == 0 else bounds[bar]
        cut = bounds[bar + prompt_bars]
        end = bounds[min(bar + prompt_bars + bars, len(bounds) - 1)]
        if end > cut:
            out.append(PromptWindow(name, tokens[begin:cut], tokens[cut:end], bar))
        bar += prompt_bars + bars
    return out


def choose_windows(pieces: Sequence[tuple[str, Sequence[int], Sequence[int] | None]], n: int,
                   prompt_bars: int, bars: int, seed: int) -> list[PromptWindow]:
    """``n`` windows spread over the pieces: round-robin over pieces in a seeded order.

    ``pieces`` holds ``(name, tokens, bar_starts)``; ``bar_starts`` None means no bar structure is
    known and the fixed token count ``TOKENS_PER_BAR_FALLBACK`` stands in for a bar.
    """
    per_piece = []
    for name, tokens, starts in pieces:
        if starts is None or len(starts) == 0:
            starts = list(range(0, len(tokens), TOKENS_PER_BAR_FALLBACK))
        found = windows_of_piece(name, tokens, starts, prompt_bars, bars)
        if found:
            per_piece.append(found)
    order = np.random.default_rng(seed).permutation(len(per_piece))
    chosen: list[PromptWindow] = []
    depth = 0
    while len(chosen) < n and any(depth < len(w) for w in per_piece):
        for i in order:
            if depth < len(per_piece[i]) and len(chosen) < n:
                chosen.append(per_piece[i][depth])
        depth += 1
    return chosen


def _note_keys(perf: Performance) -> list[tuple]:
    # millisecond keys: decoding the same ticks twice gives the same floats, so this only
    # guards against printing noise
    return list(zip(np.round(perf.onset * 1000).astype(int), perf.pitch, np.round(perf.duration * 1000).astype(int), perf.velocity))


def added_notes(prompt: Performance, whole: Performance) -> Performance:
    """The notes (and pedal presses) of ``whole`` that ``prompt`` does not already have."""
    left = Counter(_note_keys(prompt))
    keep = np.zeros(whole.n_notes, dtype=bool)
    for i, key in enumerate(_note_keys(whole)):
        if left[key] > 0:
            left[key] -= 1
        else:
            keep[i] = True
    prompt_pedals = Counter(np.round(prompt.pedal_time * 1000).astype(int).tolist())
    ped_keep = np.zeros(len(whole.pedal_time), dtype=bool)
    for i, t in enumerate(np.round(whole.pedal_time * 1000).astype(int).tolist()):
        if prompt_pedals[t] > 0:
            prompt_pedals[t] -= 1
        else:
            ped_keep[i] = True
    return Performance(whole.onset[keep], whole.duration[keep], whole.pitch[keep], whole.velocity[keep],
                       whole.pedal_time[ped_keep], whole.pedal_duration[ped_keep])


def decode_continuation(tokenizer, prompt: Sequence[int], continuation: Sequence[int]) -> Performance | None:
    """The notes ``continuation`` adds after ``prompt``; None when the tokens do not decode."""
    try:
        before = Performance.from_score(tokenizer.decode(list(prompt)))
        whole = Performance.from_score(tokenizer.decode(list(prompt) + list(continuation)))
    except Exception:  # noqa: BLE001  (MidiTok raises many kinds on malformed sequences)
        return None
    return added_notes(before, whole)


@dataclass
class SamplingOptions:
    temperature: float = SamplingConfig.temperature
    top_p: float = SamplingConfig.top_p
    # True: engine.generate's grammar-safe sessions (what the app plays); False: free sampling
    # from the raw distribution, to measure how often the model itself breaks the grammar
    grammar: bool = True
    seed: int = 0

    def config(self, seed: int):
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, seed=seed)


def generate_continuations(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    bars: int,
    max_new_tokens: Sequence[int],
    options: SamplingOptions,
    on_token: Callable[[int], None] | None = None,
    outcomes: list | None = None,
) -> list[list[int]]:
    """Continue every prompt until it would open bar ``bars + 1``, ends the piece, or reaches its cap.

    Prompt ``i`` is sampled with seed ``options.seed + i``. ``on_token(total so far)`` reports progress.
    ``outcomes`` (a list) receives ``(bars generated, stop reason)`` per prompt.
    """
    if options.grammar:
        return _generate_with_sessions(model, tokenizer, prompts, bars, max_new_tokens, options, on_token, outcomes)
    return _generate_free(model, tokenizer, prompts, bars, max_new_tokens, options, on_token, outcomes)


def _generate_with_sessions(model, tokenizer, prompts, bars, max_new_tokens, options, on_token, outcomes=None):
    from engine.generate import GenerationSession

    out: list[list[int]] = []
    done = 0
    for i, (prompt, cap) in enumerate(zip(prompts, max_new_tokens)):
        # the prompts are cut from stored pieces that already open with BOS where they should
        session = GenerationSession(model, tokenizer, options.config(options.seed + i), alternatives=1,
                                    bars=bars, max_tokens=int(cap), prepend_bos=False)
        session.prefill([int(t) for t in prompt])
        if on_token is not None:
            session.run(on_step=lambda result, before=done: on_token(before + len(session.rows[0].tokens)))
        else:
            session.run()
        out.append(session.tokens(0))
        if outcomes is not None:
            outcomes.append((session.rows[0].bars, session.rows[0].stop_reason))
        done += len(out[-1])
    return out


@torch.no_grad()
def _generate_free(model, tokenizer, prompts, bars, max_new_tokens, options, on_token, outcomes=None):
    """Batched RNN steps over all prompts, no grammar mask (PAD and BOS are still never drawn).

    Bars are counted by Bar tokens, so without them in the vocabulary only EOS and the cap stop
    a row. The Bar token that would open bar ``bars + 1`` is not kept.
    """
    from engine.generate.sampling import sample_rows
    from engine.model import RWKVState

    device = next(model.parameters()).device
    n = len(prompts)
    if n == 0:
        return []
    vocab = tokenizer.vocab_size
    config = options.config(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    # prompts differ in length: prefill each, then step all rows together
    states, last_logits = [], []
    for prompt in prompts:
        logits, state = model(torch.tensor([list(prompt)], dtype=torch.long, device=device), return_state=True)
        states.append(state)
        last_logits.append(logits[0, -1, :vocab].float().cpu())
    state = RWKVState.cat(states)
    logits = torch.stack(last_logits)
    allowed = torch.ones(1, vocab, dtype=torch.bool)
    allowed[0, [tokenizer.pad_id, tokenizer.bos_id]] = False
    bar_ids = set(tokenizer.kind_ids("Bar"))

    out: list[list[int]] = [[] for _ in range(n)]
    bars_opened = [0] * n
    active = list(range(n))
    while active:
        picked = sample_rows(logits[torch.tensor(active)], allowed.expand(len(active), -1), config,
                             [generator] * len(active), [[] for _ in active])
        still = []
        for row, token in zip(active, picked):
            if token in bar_ids:
                bars_opened[row] += 1
                if bars_opened[row] > bars:
                    continue
            out[row].append(token)
            if token != tokenizer.eos_id and len(out[row]) < int(max_new_tokens[row]):
                still.append(row)
        if on_token is not None:
            on_token(sum(len(o) for o in out))
        if not still:
            break
        state = state.select(torch.tensor([active.index(r) for r in still]))
        step_logits, state = model.step(torch.tensor([out[r][-1] for r in still], device=device), state)
        logits[torch.tensor(still)] = step_logits[:, :vocab].float().cpu()
        active = still
    if outcomes is not None:
        for row in range(n):
            ended = "eos" if out[row] and out[row][-1] == tokenizer.eos_id else "bars" if bars_opened[row] > bars else "max_tokens"
            outcomes.append((min(bars_opened[row], bars), ended))
    return out

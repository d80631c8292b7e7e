"""Auditions: every N steps the model continues a fixed validation prompt, saved as MIDI so the
user (and the TUI) can hear what the run has learnt so far.

The prompt is prefilled in parallel mode, then tokens are drawn one at a time in RNN mode with the
generation sampler (``engine.generate.sampling``) without the grammar mask, so an audition shows
what the model has learnt. PAD and BOS are never drawn; EOS ends the continuation early.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from engine.atomic import write_with
from engine.generate.sampling import SamplingConfig, sample_token


@torch.no_grad()
def continue_prompt(model, prompt: list[int], n_tokens: int, *, temperature: float, top_p: float, seed: int,
                    banned: tuple[int, ...] = (), eos_id: int | None = None) -> list[int]:
    """Prefill ``prompt`` and sample up to ``n_tokens`` new tokens in RNN mode."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    config = SamplingConfig(temperature=temperature, top_p=top_p)
    logits, state = model(torch.tensor([prompt], device=device), return_state=True)
    last = logits[0, -1]
    new_tokens: list[int] = []
    for _ in range(n_tokens):
        token = sample_token(last.float().cpu(), config, generator, banned)
        new_tokens.append(token)
        if eos_id is not None and token == eos_id:
            break
        last, state = model.step(torch.tensor([token], device=device), state)
        last = last[0]
    return new_tokens


@dataclass
class Audition:
    path: Path
    prompt_tokens: int
    new_tokens: int
    notes: int


def write_audition(model, tokenizer, prompt: list[int], path: Path, *, n_tokens: int, temperature: float,
                   top_p: float, seed: int) -> Audition:
    """Generate, decode prompt + continuation with the store's tokenizer, write MIDI atomically."""
    banned = tuple(i for i in (tokenizer.pad_id, tokenizer.bos_id) if i is not None)
    new = continue_prompt(model, prompt, n_tokens, temperature=temperature, top_p=top_p, seed=seed,
                          banned=banned, eos_id=tokenizer.eos_id)
    score = tokenizer.decode(list(prompt) + new)
    path = write_with(Path(path), lambda tmp: score.dump_midi(str(tmp)))
    notes = sum(len(track.notes) for track in score.tracks)
    return Audition(path, len(prompt), len(new), notes)

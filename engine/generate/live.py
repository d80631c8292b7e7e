"""Loading a checkpoint for generation, a session built from the knobs, and the stream of timed
events the live player plays (``engine.generate.performance`` puts them together for a take).

``chunks`` (of a built session) is the generator ``engine.midi.player.LivePlayer`` pulls from at
its own pace (when its lookahead has room): each item is ``(events, horizon_seconds, n_tokens)``
for the alternative being played; the session keeps every alternative, so the ones not played can
be saved. Knobs are read before every step, so a change in the UI applies to the next token.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Iterator

from engine.rundir import resolve_checkpoint

from .defaults import KnobSettings
from .sampling import SamplingConfig
from .session import GenerationSession, prompt_from_file
from .timeline import GenerationError

HARD_TOKEN_CAP = 16384  # a live session always ends, even with a model that never closes a bar


def load_generator(path: str | Path | None, device: str = "cpu"):
    """(model in eval mode, PianoTokenizer saved with it, resolved path)."""
    from engine.data.tokenizer import PianoTokenizer
    from engine.model import CheckpointError, load_checkpoint

    pth = resolve_checkpoint(path, GenerationError)
    try:
        model, sidecar = load_checkpoint(pth, device=device)
    except CheckpointError as err:
        raise GenerationError(str(err)) from None
    if not sidecar.get("tokenizer"):
        raise GenerationError(f"{pth} has no tokenizer in its .json sidecar, so its tokens cannot be read; use a checkpoint saved by PianoMuse training")
    tokenizer = PianoTokenizer.from_config(sidecar["tokenizer"])
    return model, tokenizer, pth


def build_session(model, tokenizer, *, prompt: str | Path | None = None, prompt_bars: str | None = None,
                  sampling: SamplingConfig | None = None, alternatives: int = 1, bars: int | None = None,
                  max_tokens: int | None = None, allow_early_end: bool = False) -> GenerationSession:
    """A prefilled session (prompt tokenized with the checkpoint's own tokenizer)."""
    session = GenerationSession(model, tokenizer, sampling, alternatives=alternatives, bars=bars, max_tokens=max_tokens,
                                allow_early_end=allow_early_end)
    ids = prompt_from_file(prompt, tokenizer, prompt_bars) if prompt else None
    if prompt_bars and not prompt:
        raise GenerationError("--prompt-bars needs --prompt FILE.mid")
    session.prefill(ids)
    return session


def knob_sampling(knobs: KnobSettings, sampling: SamplingConfig | None = None) -> SamplingConfig:
    """What a session starts sampling with: ``sampling`` when given (every option, e.g. the command's
    flags), else the knobs' temperature, top-p and seed over the engine defaults."""
    return sampling if sampling is not None else SamplingConfig(temperature=knobs.temperature, top_p=knobs.top_p, seed=knobs.seed)


def session_from_knobs(model, tokenizer, knobs: KnobSettings, *, prompt=None, prompt_bars: str | None = None,
                       sampling: SamplingConfig | None = None, max_tokens: int | None = None,
                       allow_early_end: bool = False) -> GenerationSession:
    """A prefilled session for the knobs' alternatives and bars (``knob_sampling`` says how it samples);
    ``max_tokens`` per alternative, at most ``HARD_TOKEN_CAP``."""
    return build_session(model, tokenizer, prompt=prompt, prompt_bars=prompt_bars, sampling=knob_sampling(knobs, sampling),
                         alternatives=knobs.alternatives, bars=knobs.bars, max_tokens=max_tokens or HARD_TOKEN_CAP,
                         allow_early_end=allow_early_end)


class KnobFollower:
    """Applies the UI's knobs to a session when they change (call before each step): temperature,
    top-p and, unless ``bars`` is False, the number of bars."""

    def __init__(self, session: GenerationSession, knobs: Callable[[], KnobSettings] | None, bars: bool = True) -> None:
        self.session, self.knobs, self.bars = session, knobs, bars
        self.version = knobs().version if knobs is not None else None

    def __call__(self) -> None:
        if self.knobs is None:
            return
        latest = self.knobs()
        if latest.version == self.version:
            return
        self.version = latest.version
        self.session.sampling.temperature = latest.temperature
        self.session.sampling.top_p = latest.top_p
        if self.bars and latest.bars:
            self.session.bars = latest.bars


def chunks(session: GenerationSession, row: int = 0, knobs: Callable[[], KnobSettings] | None = None,
           stop: threading.Event | None = None) -> Iterator[tuple[list, float, int]]:
    """Step ``session`` and yield ``(events, horizon, n_tokens)`` of row ``row`` until done or ``stop``;
    the last item releases what still sounds. Knobs are read before every step."""
    follow = KnobFollower(session, knobs)
    while not session.done and not (stop is not None and stop.is_set()):
        follow()
        result = session.step()
        yield result.events[row], session.rows[row].decoder.horizon, sum(t is not None for t in result.tokens)
    tail = session.finish()
    yield tail[row], session.rows[row].decoder.horizon, 0

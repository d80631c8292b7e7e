"""GenerationSession: a prompt prefilled in parallel mode, then K alternatives stepped together in RNN mode.

Per alternative (row) the session keeps its tokens, a grammar timeline, a StreamDecoder, a
torch.Generator and a snapshot at every bar start (model state, next-token logits, timeline,
decoder, generator state), so ``rewind(bar)`` replays that bar exactly or, with a new seed, tries
it again; ``branch`` starts a new session of K ideas from one row's bar.
"""
from __future__ import annotations

import math
import os
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.midi.events import MidiEvent, take_until, write_midi_file

from .decoder import StreamDecoder
from .grammar import GrammarMask
from .sampling import SamplingConfig, row_seed, sample_rows
from .timeline import GenerationError, TokenTables

COST_WINDOW = 64  # the recent tokens whose wall time ``seconds_for`` reads
COST_QUANTILE = 0.9  # a busy moment shows in it; one stray stall (a GC pause) does not


@dataclass
class Snapshot:
    """Everything a row needs to continue from the start of one bar."""

    tokens: int  # how many generated tokens came before
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    logits: torch.Tensor
    decoder: StreamDecoder
    rng: torch.Tensor
    events: int


@dataclass
class Mark:
    """Where every row stands between two tokens, for ``GenerationSession.restore`` (a token-level undo)."""

    fed: int
    tokens: list[int]
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    logits: torch.Tensor
    decoders: list[tuple]
    rngs: list[torch.Tensor]
    note_now: bool
    generated: int


@dataclass
class StepResult:
    tokens: list[int | None]  # the id drawn per row (None: that row had already stopped)
    events: list[list[MidiEvent]]  # MidiEvents each row made certain this step


@dataclass
class Row:
    seed: int
    generator: torch.Generator
    decoder: StreamDecoder
    tokens: list[int] = field(default_factory=list)
    stop_reason: str | None = None  # "bars" | "eos" | "max_tokens"
    start_bar: int = 0
    bars_requested: int | None = None  # set when the row stopped at its bar limit
    snapshots: "OrderedDict[int, Snapshot]" = field(default_factory=OrderedDict)

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    @property
    def bars(self) -> int:
        """Bars generated; a row stopped at its bar limit has all of them (the last may be silent)."""
        if self.stop_reason == "bars" and self.bars_requested is not None:
            return self.bars_requested
        return self.decoder.timeline.bar_index - self.start_bar


class GenerationSession:
    def __init__(
        self,
        model,
        tokenizer,
        sampling: SamplingConfig | None = None,
        alternatives: int = 1,
        bars: int | None = None,
        max_tokens: int | None = None,
        prepend_bos: bool = True,
        max_snapshots: int = 32,
        allow_early_end: bool = False,
    ) -> None:
        """``bars``: generate exactly that many bars; the model's end token is masked until then
        unless ``allow_early_end`` (then ``ended_early`` says which rows stopped short)."""
        if alternatives < 1:
            raise GenerationError("--alternatives must be at least 1")
        if bars is not None and bars < 1:
            raise GenerationError("--bars must be at least 1")
        if max_tokens is not None and max_tokens < 1:
            raise GenerationError("--max-tokens must be at least 1")
        if model.config.vocab_size != tokenizer.vocab_size:
            raise GenerationError(
                f"the model's vocabulary ({model.config.vocab_size}) does not match its tokenizer ({tokenizer.vocab_size}); use the tokenizer saved with the checkpoint"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.tables = TokenTables(tokenizer)
        self.grammar = GrammarMask(self.tables)
        self.sampling = sampling or SamplingConfig()
        self.alternatives = alternatives
        self.bars = bars
        self.max_tokens = max_tokens
        self.prepend_bos = prepend_bos
        self.max_snapshots = max_snapshots
        self.allow_early_end = allow_early_end
        self.seed = self.sampling.seed if self.sampling.seed is not None else int.from_bytes(os.urandom(4), "little")
        self.prompt: list[int] = []
        self.rows: list[Row] = []
        self.state = None
        self.logits: torch.Tensor | None = None
        self.device = next(model.parameters()).device
        self.tokens_generated = 0
        self.forced: list[int] = []  # tokens fed with ``force`` (a pianist's notes), in order
        self.fed: list[int] = []  # every token row 0's state has seen after the prompt, sampled or forced
        self.pitch_mask: torch.Tensor | None = None  # ``limit_pitches``
        self.note_now = False  # True: the next token drawn is a Pitch (then False again)
        self.endless = False  # True: the model never draws the end token (a duet ends when the pianist stops it)
        self._costs: deque[float] = deque(maxlen=COST_WINDOW)  # wall seconds of recent tokens, drawn or forced
        self._warm = False  # the first token pays one-time setup (the fused step's first call): not a cost

    # ----- prompt -----
    @torch.no_grad()
    def prefill(self, prompt: list[int] | None = None) -> None:
        """Run the prompt in parallel mode once; its final state seeds all K rows in RNN mode."""
        self.prompt = [int(t) for t in (prompt or [])]
        ids = ([self.tokenizer.bos_id] if self.prepend_bos else []) + self.prompt
        if ids:
            idx = torch.tensor([ids], dtype=torch.long, device=self.device)
            logits, state = self.model(idx, return_state=True)
            last = logits[:, -1]
        else:
            state = self.model.init_state(1)
            last = torch.zeros(1, self.model.config.vocab_size, device=self.device)
        self.state = state.repeat(self.alternatives)
        self.logits = last.float().repeat(self.alternatives, 1)
        primed = StreamDecoder(self.tables)
        primed.prime(self.prompt)
        self.rows = []
        for r in range(self.alternatives):
            seed = row_seed(self.seed, r)
            gen = torch.Generator(device="cpu")
            gen.manual_seed(seed)
            row = Row(seed=seed, generator=gen, decoder=primed.copy())
            timeline = row.decoder.timeline
            # A bar counts once its first token is generated; starting exactly on a bar line counts it.
            row.start_bar = timeline.bar_index
            if self.tables.tokenization != "REMI" and timeline.tick == timeline.ts_tick + (timeline.bar_index - timeline.ts_bar) * timeline.ticks_per_bar:
                row.start_bar -= 1
            self.rows.append(row)
            self._snapshot(r, 0)

    # ----- snapshots -----
    def _snapshot(self, r: int, bar: int) -> None:
        row = self.rows[r]
        row.snapshots[bar] = Snapshot(
            tokens=len(row.tokens),
            state=(self.state.att_shift[:, r].clone(), self.state.wkv[:, r].clone(), self.state.ffn_shift[:, r].clone()),
            logits=self.logits[r].clone(),
            decoder=row.decoder.copy(),
            rng=row.generator.get_state(),
            events=len(row.decoder.events),
        )
        while len(row.snapshots) > self.max_snapshots:
            oldest = next(iter(row.snapshots))
            if oldest == 0 and len(row.snapshots) > 1:  # keep the start; drop the oldest bar after it
                oldest = list(row.snapshots)[1]
            del row.snapshots[oldest]

    def snapshot_bars(self, row: int = 0) -> list[int]:
        return list(self.rows[row].snapshots)

    def rewind(self, bar: int, rows: list[int] | None = None, seed: int | None = None) -> None:
        """Return rows to the start of generated bar ``bar`` (0: the start of generation).

        Same seed: the continuation replays exactly. ``seed``: try that bar again differently.
        """
        for r in (range(self.alternatives) if rows is None else rows):
            row = self.rows[r]
            snap = row.snapshots.get(bar)
            if snap is None:
                raise GenerationError(f"no snapshot for bar {bar} of alternative {r}; available bars: {sorted(row.snapshots)}")
            self.state.att_shift[:, r] = snap.state[0]
            self.state.wkv[:, r] = snap.state[1]
            self.state.ffn_shift[:, r] = snap.state[2]
            self.logits[r] = snap.logits
            row.decoder = snap.decoder.copy()
            del row.tokens[snap.tokens:]
            row.generator.set_state(snap.rng)
            if seed is not None:
                row.seed = row_seed(seed, r)
                row.generator.manual_seed(row.seed)
            row.stop_reason = None
            for later in [b for b in row.snapshots if b > bar]:
                del row.snapshots[later]

    def branch(self, row: int, bar: int, alternatives: int | None = None, seed: int | None = None) -> "GenerationSession":
        """A new session whose K rows all start from ``row`` at ``bar`` (e.g. "4 more ideas for bar 3")."""
        snap = self.rows[row].snapshots.get(bar)
        if snap is None:
            raise GenerationError(f"no snapshot for bar {bar} of alternative {row}; available bars: {sorted(self.rows[row].snapshots)}")
        k = alternatives or self.alternatives
        sampling = SamplingConfig(**{**self.sampling.to_dict(), "seed": self.seed + 1 if seed is None else seed})
        twin = GenerationSession(self.model, self.tokenizer, sampling, k, self.bars, self.max_tokens, self.prepend_bos,
                                 self.max_snapshots, self.allow_early_end)
        twin.prompt = self.prompt + self.rows[row].tokens[: snap.tokens]
        twin.state = type(self.state)(*(t.unsqueeze(1).repeat_interleave(k, dim=1) for t in snap.state))
        twin.logits = snap.logits.unsqueeze(0).repeat(k, 1)
        twin.rows = []
        for r in range(k):
            s = row_seed(twin.seed, r)
            gen = torch.Generator(device="cpu")
            gen.manual_seed(s)
            decoder = snap.decoder.copy()
            new_row = Row(seed=s, generator=gen, decoder=decoder, start_bar=self.rows[row].start_bar + bar)
            twin.rows.append(new_row)
            twin._snapshot(r, 0)
        return twin

    # ----- generation -----
    @property
    def done(self) -> bool:
        return bool(self.rows) and all(row.done for row in self.rows)

    def _remaining(self, row: Row) -> int | None:
        return None if self.max_tokens is None else self.max_tokens - len(row.tokens)

    @torch.no_grad()
    def step(self) -> StepResult:
        """Draw one token for every running row and advance the model one step in RNN mode."""
        if self.state is None:
            raise GenerationError("call prefill() (with or without a prompt) before step()")
        started = time.perf_counter()
        k = self.alternatives
        allowed = torch.zeros(k, self.tables.vocab_size, dtype=torch.bool)
        # with --bars the piece ends at its last bar line, not where the model would like to stop
        may_end = (self.bars is None or self.allow_early_end) and not self.endless
        for r, row in enumerate(self.rows):
            if row.done:
                allowed[r, self.tables.eos_id] = True
            else:
                allowed[r] = self.grammar.allowed(row.decoder.timeline, self._remaining(row), allow_eos=may_end)
                if self.pitch_mask is not None and bool((allowed[r] & self.pitch_mask).any()):
                    allowed[r] &= self.pitch_mask  # e.g. accompany: the model's notes stay below the split
                if self.note_now and bool((allowed[r] & self.grammar.pitch).any()):
                    allowed[r] &= self.grammar.pitch  # a handover: the first note sounds where it was placed
        window = self.sampling.penalty_window
        recent = [row.tokens[-window:] if window else [] for row in self.rows]
        drawn = sample_rows(self.logits, allowed.to(self.logits.device), self.sampling, [row.generator for row in self.rows], recent)
        tokens: list[int | None] = [None] * k
        events: list[list[MidiEvent]] = [[] for _ in range(k)]
        feed = []
        bars_before = [row.decoder.timeline.bar_index for row in self.rows]
        for r, row in enumerate(self.rows):
            token = drawn[r]
            if row.done:
                feed.append(self.tables.eos_id)
                continue
            timeline = row.decoder.timeline
            if self.bars is not None and timeline.bar_after(token) - row.start_bar > self.bars:
                # this token would open one bar too many: stop before it, the piece ending on the
                # bar line after the last bar (a rest may have left the last bars silent)
                owed = self.bars - (timeline.bar_index - row.start_bar)
                row.decoder.end_tick = timeline.bar_start_tick + (owed + 1) * timeline.ticks_per_bar
                row.stop_reason, row.bars_requested = "bars", self.bars
                feed.append(self.tables.eos_id)
                continue
            tokens[r] = token
            if self.note_now and self.tables.kind[token] == "Pitch":
                self.note_now = False
            row.tokens.append(token)
            feed.append(token)
            events[r] = row.decoder.feed(token)
            if token == self.tables.eos_id:
                row.stop_reason = "eos"
            elif self._remaining(row) is not None and self._remaining(row) <= 0 and row.decoder.timeline.note_stage == 0:
                row.stop_reason = "max_tokens"
        self.tokens_generated += sum(t is not None for t in tokens)
        self.logits, self.state = self._advance(feed)
        for r, row in enumerate(self.rows):
            if tokens[r] is not None and not row.done and row.decoder.timeline.bar_index > bars_before[r]:
                self._snapshot(r, row.bars)
        self._timed(time.perf_counter() - started)
        return StepResult(tokens, events)

    def _timed(self, seconds: float) -> None:
        if self._warm:
            self._costs.append(seconds)
        self._warm = True

    def seconds_for(self, tokens: int) -> float | None:
        """How long ``tokens`` tokens in a row (every row at once, drawn or forced) take on this
        machine now: the 90th percentile of the summed wall time of each run of that many among the
        last COST_WINDOW tokens (one slow token in a run counts once, not for every token); None
        before any was timed. A duet sizes the time it leaves for its first note after a handover from it."""
        costs = list(self._costs)
        if not costs:
            return None
        if len(costs) < tokens:
            return tokens * sorted(costs)[math.ceil(COST_QUANTILE * (len(costs) - 1))]
        run = sum(costs[:tokens])
        runs = [run]
        for i in range(tokens, len(costs)):
            run += costs[i] - costs[i - tokens]
            runs.append(run)
        runs.sort()
        return runs[math.ceil(COST_QUANTILE * (len(runs) - 1))]

    def mark(self) -> Mark:
        """The session as it stands now; ``restore`` returns to it (e.g. to forget notes generated
        ahead that were never played)."""
        return Mark(
            fed=len(self.fed),
            tokens=[len(row.tokens) for row in self.rows],
            state=(self.state.att_shift.clone(), self.state.wkv.clone(), self.state.ffn_shift.clone()),
            logits=self.logits.clone(),
            decoders=[(d.timeline.copy(), list(d._pending_offs), dict(d._sounding), len(d.notes), len(d.events), d.end_tick)
                      for d in (row.decoder for row in self.rows)],
            rngs=[row.generator.get_state() for row in self.rows],
            note_now=self.note_now,
            generated=self.tokens_generated,
        )

    def restore(self, mark: Mark) -> None:
        """Back to ``mark``: the tokens after it leave the state, the timelines and the decoders."""
        self.state = type(self.state)(*(t.clone() for t in mark.state))
        self.logits = mark.logits.clone()
        del self.fed[mark.fed:]
        for row, count, (timeline, pending, sounding, notes, events, end_tick), rng in zip(self.rows, mark.tokens, mark.decoders, mark.rngs):
            del row.tokens[count:]
            decoder = row.decoder
            decoder.timeline = timeline.copy()
            decoder._pending_offs = list(pending)
            decoder._sounding = dict(sounding)
            del decoder.notes[notes:]
            del decoder.events[events:]
            decoder.end_tick = end_tick
            row.generator.set_state(rng)
            row.stop_reason = None
        self.note_now = mark.note_now
        self.tokens_generated = mark.generated

    def limit_pitches(self, low: int | None, high: int | None) -> None:
        """Let the model draw only pitches in [low, high] from now on (None, None: all of them again)."""
        if low is None and high is None:
            self.pitch_mask = None
            return
        mask = torch.ones(self.tables.vocab_size, dtype=torch.bool)
        for i in self.tables.tokenizer.kind_ids("Pitch"):
            pitch = int(self.tables.value[i])
            mask[i] = (low is None or pitch >= low) and (high is None or pitch <= high)
        self.pitch_mask = mask

    @torch.no_grad()
    def force(self, ids: list[int]) -> None:
        """Feed tokens nobody sampled (what a pianist played, tokenized live) into every row, one RNN
        step each, so the model continues from them; the timelines follow, and no event is emitted
        (those notes already sounded)."""
        for token in ids:
            started = time.perf_counter()
            for row in self.rows:
                row.decoder.timeline.feed(int(token))
            self.logits, self.state = self._advance([int(token)] * self.alternatives)
            self.forced.append(int(token))
            self._timed(time.perf_counter() - started)

    def _advance(self, feed: list[int]):
        self.fed.append(feed[0])
        logits, state = self.model.step(torch.tensor(feed, dtype=torch.long, device=self.device), self.state)
        return logits.float(), state

    def finish(self) -> list[list[MidiEvent]]:
        """Release what still sounds in every row (note-offs at their ends, pedal up)."""
        return [row.decoder.finish() for row in self.rows]

    def run(self, on_step=None, max_steps: int | None = None) -> None:
        """Generate until every row stops (bars, end token, or token budget). ``on_step(StepResult)``."""
        if self.bars is None and self.max_tokens is None:
            raise GenerationError("say when to stop: give --bars M or --max-tokens N")
        steps = 0
        while not self.done and (max_steps is None or steps < max_steps):
            result = self.step()
            steps += 1
            if on_step is not None:
                on_step(result)

    # ----- results -----
    def ended_early(self, row: int = 0) -> bool:
        """True when a ``bars`` request stopped short of its bars (the model's end token or the token budget)."""
        r = self.rows[row]
        return self.bars is not None and r.stop_reason in ("eos", "max_tokens") and r.bars < self.bars

    def tokens(self, row: int = 0) -> list[int]:
        return list(self.rows[row].tokens)

    def events(self, row: int = 0) -> list[MidiEvent]:
        return list(self.rows[row].decoder.events)

    def score(self, row: int = 0, with_prompt: bool = False):
        """The row's tokens decoded by the tokenizer itself (symusic.Score)."""
        ids = (self.prompt if with_prompt else []) + self.rows[row].tokens
        return self.tokenizer.decode(ids)

    def write_midi(self, row: int, path: str | Path, until: float | None = None) -> Path:
        """Exactly the events streamed for this row (after ``finish``), as a .mid file with the
        tempo map and time signatures of its tokens. ``until``: a take saved mid-performance, cut
        at that music time with every sounding note released there."""
        decoder = self.rows[row].decoder
        events = list(decoder.events) if until is None else take_until(decoder.events, until)
        return write_midi_file(events, path, meter=decoder.meter())


def parse_bar_range(spec: str | None) -> tuple[int | None, int | None] | None:
    """"4" -> last 4 bars; "3-6" -> bars 3..6 (1-based, inclusive); "5-" -> bar 5 to the end; None -> all."""
    if spec is None or str(spec).strip() == "":
        return None
    text = str(spec).strip()
    try:
        if "-" not in text:
            n = int(text)
            if n < 1:
                raise ValueError
            return (-n, None)
        first, _, last = text.partition("-")
        a = int(first)
        b = int(last) if last.strip() else None
        if a < 1 or (b is not None and b < a):
            raise ValueError
        return (a - 1, b)
    except ValueError:
        raise GenerationError(f"bad bar range {spec!r}; use N (the last N bars), A-B (bars A to B, from 1) or A- (bar A to the end)") from None


def prompt_from_file(path: str | Path, tokenizer, bars: str | None = None) -> list[int]:
    """Token ids of a MIDI file (optionally a bar range) with the checkpoint's own tokenizer.

    A slice that starts mid-piece gets the tempo (and, for TSD, the time signature) in force there,
    so the model hears the right speed and metre.
    """
    from engine.data.check import CheckPolicy

    path = Path(path)
    if path.is_dir():
        raise GenerationError(f"the prompt {path} is a folder; give a .mid file")
    if not path.is_file():
        raise GenerationError(f"the prompt file {path} does not exist; give a .mid file")
    score = _screened_prompt(path, tokenizer)
    ids, bar_starts = tokenizer.encode_with_bars(score)
    if not any(tokenizer.token_kind(t) in ("Pitch", "NoteOn") for t in ids):
        raise GenerationError(f"the prompt {path} has no piano notes to continue (drums and other instruments are "
                              "left out); give a file with piano notes")
    limit = CheckPolicy().limit_tokens
    if len(ids) > limit:
        raise GenerationError(f"the prompt {path} is {len(ids):,} tokens, over the limit of {limit:,} (limit_tokens); "
                              "give a shorter file")
    span = parse_bar_range(bars)
    if span is None:
        return ids
    first, last = span
    n = len(bar_starts)
    if first < 0:
        first = max(0, n + first)
    if first >= n:
        raise GenerationError(f"the prompt has {n} bars, so bar {first + 1} does not exist; pick a range within 1-{n}")
    end = len(ids) if last is None or last >= n else bar_starts[last]
    head = _context_tokens(tokenizer, ids[: bar_starts[first]])
    body = ids[bar_starts[first]:end]
    if tokenizer.tokenization == "REMI" and head:
        # REMI: Bar, TimeSig, then Position_0 Tempo before the bar's first onset.
        insert_at = 2 if len(body) > 1 and tokenizer.token_kind(body[1]) == "TimeSig" else 1
        position0 = tokenizer.token_id("Position_0")
        tempo = [t for t in head if tokenizer.token_kind(t) == "Tempo"]
        already = body[insert_at: insert_at + 2]
        if tempo and not any(tokenizer.token_kind(t) == "Tempo" for t in already):
            if already and already[0] == position0:
                body = body[: insert_at + 1] + tempo + body[insert_at + 1:]
            else:
                body = body[:insert_at] + [position0] + tempo + body[insert_at:]
        return body
    return head + body


def _screened_prompt(path: Path, tokenizer):
    """The prompt's score, read under the same limits as ``check`` (size, length in beats, duration,
    silence, notes), each checked before the next step can expand the file."""
    import numpy as np
    import symusic

    from engine.data.check import (
        CheckPolicy, OverLimit, check_span, check_timing_header, note_span, parser_problem, read_within_limits,
    )
    from engine.data.midi_bytes import MidiStructureError, walk_midi_bytes

    policy = CheckPolicy()
    try:
        data = read_within_limits(path, policy)
        raw = walk_midi_bytes(data)
        data, _ = check_timing_header(raw, data, policy)  # SMPTE files are read as check reads them
        score = symusic.Score.from_midi(data)
    except OSError as err:
        raise GenerationError(f"cannot read the prompt {path} ({err.strerror or err}); give a readable .mid file") from None
    except (MidiStructureError, OverLimit) as err:
        raise GenerationError(f"the prompt {path} cannot be used: {err.reason}") from None
    except Exception as err:  # noqa: BLE001 - symusic raises several types for bad files
        raise GenerationError(f"the prompt {path} cannot be used: {parser_problem(err)}") from None
    notes = [track.notes.numpy() for track in score.to("second").tracks if len(track.notes)]
    if notes:
        start = np.concatenate([n["time"] for n in notes]).astype(np.float64)
        end = start + np.concatenate([n["duration"] for n in notes]).astype(np.float64)
        try:
            check_span(*note_span(start, end), len(start), policy)
        except OverLimit as err:
            raise GenerationError(f"the prompt {path} cannot be used: {err.reason}") from None
    return score


def _context_tokens(tokenizer, before: list[int]) -> list[int]:
    """The last TimeSig and Tempo before a cut (what a slice needs to keep its metre and speed)."""
    out = []
    for kind in ("TimeSig", "Tempo"):
        found = [t for t in before if tokenizer.token_kind(t) == kind]
        if found:
            out.append(found[-1])
    if tokenizer.tokenization == "REMI":
        return [t for t in out if tokenizer.token_kind(t) == "Tempo"]
    return out

"""Training data for the loop: a deterministic sample stream, sharded by rank, resumable.

The stream is a pure function of (seed, cursor): the cursor counts samples consumed over all
processes, each epoch is a fresh permutation seeded by (seed, epoch), and each sample's
augmentation is seeded by (seed, global sample index). So a resumed run, or one launched on a
different number of processes, sees exactly the same global batches.

One optimizer step takes ``batch_size`` consecutive samples of the stream; micro-batch m of
process r holds samples [(m * world + r) * micro, ...). Every process counts the targets of the
whole global batch (cheap, from lengths), which is the divisor of the loss.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.data.windows import collate
from engine.model.loss import completion_mask

from .config import ConfigError, TrainConfig
from .distributed import DistInfo
from .objective import lm_loss_mask


class DataError(RuntimeError):
    """The training data cannot be used (one sentence saying what to do)."""


@dataclass
class Chunk:
    """One forward pass: a time slice of a micro-batch."""

    input_ids: torch.Tensor  # [B, T]
    loss_mask: torch.Tensor  # [B, T] bool
    target_ids: torch.Tensor  # [B, T + 1]
    cu_seqlens: torch.Tensor | None
    first: bool
    last: bool
    n_targets: int = 0
    n_notes: int = 0

    def to(self, device: torch.device) -> tuple:
        nb = device.type == "cuda"
        move = lambda t: None if t is None else t.to(device, non_blocking=nb)  # noqa: E731
        return move(self.input_ids), move(self.loss_mask), move(self.target_ids), move(self.cu_seqlens)


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [B, T] (packed: [1, N])
    loss_mask: torch.Tensor  # [B, T] bool
    cu_seqlens: torch.Tensor | None
    pad_id: int = 0

    def chunks(self, tbptt_len: int = 0) -> list[Chunk]:
        """The whole micro-batch, or consecutive time slices of ``tbptt_len`` tokens."""
        T = self.input_ids.shape[1]
        padded = torch.nn.functional.pad(self.input_ids, (0, 1), value=self.pad_id)
        if tbptt_len <= 0 or tbptt_len >= T:
            return [Chunk(self.input_ids, self.loss_mask, padded, self.cu_seqlens, True, True)]
        if self.cu_seqlens is not None:
            raise ConfigError("train.tbptt_len needs padded batches; packed LM chunks are already bounded by data.ctx_len, so set train.tbptt_len=0 with data.objective=lm")
        out = []
        for start in range(0, T, tbptt_len):
            end = min(start + tbptt_len, T)
            out.append(Chunk(self.input_ids[:, start:end], self.loss_mask[:, start:end], padded[:, start:end + 1], None,
                             start == 0, end == T))
        return out


@dataclass
class StepPlan:
    micro_batches: list[MicroBatch]  # this process's share
    n_targets: int  # loss positions in the whole global batch
    n_tokens: int  # real (non-padding) tokens in the whole global batch
    n_samples: int


class TrainingFeed:
    def __init__(self, cfg: TrainConfig, tokenizer, train: list, val: list, dist: DistInfo,
                 augmenter=None, source: str = ""):
        if not train:
            raise DataError(f"the training split of {source or 'the data'} yields no samples of ctx_len {cfg.data.ctx_len}; add MIDI files or lower data.context_bars/data.completion_bars")
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.train = train
        self.val = val
        self.dist = dist
        self.augmenter = augmenter
        self.source = source
        self.pad_id = tokenizer.pad_id
        self.note_ids = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
        self.note_ids[tokenizer.note_start_ids()] = True
        self._perm_cache: dict[int, np.ndarray] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pianomuse-feed") if cfg.data.loader_workers > 0 else None
        self._pending: tuple[int, int, Future] | None = None

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def mean_sample_tokens(self) -> float:
        return float(np.mean([len(s.tokens) for s in self.train]))

    # ---- the stream --------------------------------------------------------------------------
    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            rng = np.random.default_rng([self.cfg.train.seed, epoch])
            self._perm_cache = {epoch: rng.permutation(len(self.train))}
        return self._perm_cache[epoch]

    def sample_at(self, index: int):
        """Global stream position -> the (augmented) training sample."""
        n = len(self.train)
        sample = self.train[int(self._permutation(index // n)[index % n])]
        if self.augmenter is not None:
            rng = np.random.default_rng([self.cfg.train.seed, 1_000_003, index])
            sample = self.augmenter(sample, rng)
        return sample

    def collate(self, samples: list) -> MicroBatch:
        """Completion windows -> padded rows with the completion mask; packed chunks -> one
        varlen row with cu_seqlens and the LM mask (engine.data.windows.collate does the layout)."""
        batch = collate(samples, pad_id=self.pad_id)
        ids = batch["input_ids"]
        if "cu_seqlens" in batch:
            return MicroBatch(ids, lm_loss_mask(ids, batch["cu_seqlens"]), batch["cu_seqlens"], self.pad_id)
        mask = completion_mask(ids, batch["ctx_lengths"], batch["attention_mask"], self.pad_id)
        return MicroBatch(ids, mask, None, self.pad_id)

    def _build_plan(self, cursor: int, accum: int) -> StepPlan:
        micro, world, rank = self.cfg.train.micro_batch_size, self.dist.world_size, self.dist.rank
        samples = [self.sample_at(cursor + i) for i in range(self.cfg.train.batch_size)]
        n_tokens = sum(len(s.tokens) for s in samples)
        mine, n_targets = [], 0
        for m in range(accum):
            for r in range(world):
                start = (m * world + r) * micro
                mb = self.collate(samples[start:start + micro])
                n_targets += int(mb.loss_mask.sum())
                if r == rank:
                    mine.append(mb)
        if n_targets == 0:
            raise DataError("a training batch has no target tokens (every window is all context); raise data.completion_bars or lower data.context_bars")
        return StepPlan(mine, n_targets, n_tokens, len(samples))

    def plan_step(self, cursor: int, accum: int) -> StepPlan:
        """The batch at ``cursor``; the next one is built in a background thread meanwhile."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[:2] == (cursor, accum):
            plan = pending[2].result()
        else:
            plan = self._build_plan(cursor, accum)
        if self._pool is not None:
            nxt = cursor + plan.n_samples
            self._pending = (nxt, accum, self._pool.submit(self._build_plan, nxt, accum))
        if torch.cuda.is_available() and self.cfg.train.device != "cpu":
            for mb in plan.micro_batches:
                mb.input_ids = mb.input_ids.pin_memory()
                mb.loss_mask = mb.loss_mask.pin_memory()
        return plan

    # ---- validation and auditions --------------------------------------------------------------
    def val_chunks(self, micro: int, max_batches: int, dist: DistInfo, same_count: bool = False):
        """This process's share of the (capped) validation set, with target and note counts.

        ``same_count``: every process yields as many chunks as the busiest one (sharded models
        gather weights in every forward, so all processes must run the same number); the extra
        chunks repeat a batch and carry ``discard=True`` with zero counts.
        """
        samples = self.val[: max_batches * micro] if max_batches else self.val
        batches = [samples[i:i + micro] for i in range(0, len(samples), micro)]
        mine = batches[dist.rank::dist.world_size]
        rounds = -(-len(batches) // dist.world_size) if same_count else len(mine)
        for i in range(rounds):
            discard = i >= len(mine)
            chunk = self.collate(mine[i] if not discard else batches[0]).chunks(0)[0]
            targets = chunk.target_ids[:, 1:][chunk.loss_mask]
            chunk.discard = discard
            chunk.n_targets = 0 if discard else int(targets.numel())
            chunk.n_notes = 0 if discard else int(self.note_ids[targets].sum())
            yield chunk

    def audition_prompt(self, n_tokens: int) -> list[int]:
        """A fixed prompt: the start of the first validation sample (training's if no validation)."""
        source = self.val[0] if self.val else self.train[0]
        tokens = np.asarray(source.tokens).tolist()
        if getattr(source, "ctx_len", None):
            tokens = tokens[: max(source.ctx_len, 1)]
        return [t for t in tokens[:n_tokens] if t != self.pad_id]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def resolve_store(cfg: TrainConfig, on_progress=None) -> Path:
    """The token store for ``data.path``: "" = the bundled corpus (prepared once, cached); a store
    folder as it is; a MIDI folder prepared (incrementally) into ``store_for(folder)``, the store
    `prepare FOLDER` made with the same data config."""
    from engine.data.check import ScanError
    from engine.data.store import PrepareConfig, StoreError, default_store, prepare, store_for

    try:
        prep = PrepareConfig.load(cfg.data.prepare_config) if cfg.data.prepare_config else PrepareConfig()
    except ValueError as exc:
        raise DataError(str(exc)) from None
    try:
        if not cfg.data.path:
            return default_store(prep, on_progress=on_progress)
        path = Path(cfg.data.path).expanduser()
        if (path / "index.json").is_file():
            return path
        if not path.exists():
            raise DataError(f"data folder {path} does not exist; pass --data with a folder of MIDI files or a prepared token store")
        if not path.is_dir():
            raise DataError(f"--data {path} is a file; pass a folder of MIDI files or a prepared token store")
        out = store_for(path, prep)
        prepare(path, out, prep, on_progress=on_progress)
        return out
    except (ScanError, StoreError, ValueError) as exc:
        raise DataError(str(exc)) from None


def open_feed(cfg: TrainConfig, dist: DistInfo, on_progress=None) -> TrainingFeed:
    """Open (preparing if needed) the token store named by ``data.path`` and cut its samples."""
    from engine.data.augment import AugmentConfig, Augmenter
    from engine.data.store import StoreError, TokenStore
    from engine.data.windows import store_completion_windows, store_packed_chunks

    store_path = resolve_store(cfg, on_progress)
    try:
        store = TokenStore.open(store_path)
    except StoreError as exc:
        raise DataError(str(exc)) from None
    if not store.pieces():
        raise DataError(f"{cfg.data.path or store_path} holds no usable MIDI piece; point --data at a folder of piano MIDI files (run `pianomuse-tui --headless check` on it to see why files were rejected)")
    d = cfg.data
    if d.objective == "completion":
        def cut(split):
            return store_completion_windows(store, split, context_bars=d.context_bars, completion_bars=d.completion_bars,
                                            stride_bars=d.stride_bars, max_len=d.ctx_len)
        train, val = cut("train"), cut("val")
    else:
        train = store_packed_chunks(store, "train", d.ctx_len)
        val = store_packed_chunks(store, "val", d.ctx_len, keep_tail=True)
    if d.max_train_samples:
        train = train[: d.max_train_samples]
    augmenter = None
    if d.augment:
        augmenter = Augmenter(store.tokenizer, AugmentConfig(d.transpose_range, d.velocity_jitter, d.tempo_jitter))
    return TrainingFeed(cfg, store.tokenizer, train, val, dist, augmenter, source=str(store_path))

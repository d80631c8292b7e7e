"""The token store: a prepared, memory-mapped dataset of tokenized pieces.

A store is a folder:

    tokens.npy      every piece's token ids back to back (no BOS/EOS), int16 or int32, read with mmap
    bars.npy        bar starts of every piece (token offsets relative to the piece), back to back
    index.json      {"format", "pieces": [{path, file_hash, note_hash, split, offset, length,
                    bar_offset, bar_count, duration_s, notes}], "split": {...}, "totals": {...}}
    tokenizer.json  the tokenizer config (``PianoTokenizer.to_config()``)
    report.json     the check report of the last prepare (``ScanReport``)
    config.json     the prepare config used
    pending/        per-file results of a prepare that has not finished (cancelled, killed)

``prepare`` is incremental and resumable: a file whose bytes hash to a piece already in the store,
or to a file a cancelled prepare finished (tokenized with the same tokenizer config), is not read
again. The train/validation split is per piece and
depends only on the piece's note content and the split seed, so it is stable across re-prepares
and no window of a validation piece can reach training.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from engine.atomic import write_atomic, write_with

from .piano_policy import DEFAULT_PIANO_POLICY
from .check import CheckPolicy, FileProgress, FileRecord, ScanError, ScanReport, find_midi_files, mark_duplicates, run_inspections, summarize

STORE_FORMAT = "pianomuse-store/1"
SPLITS = ("train", "val")


class StoreError(RuntimeError):
    """A store that cannot be opened or written; the message is one sentence for the user."""


def _table(data: dict, name: str) -> dict:
    """The ``[name]`` section of a data.toml, removed from ``data`` (empty when absent)."""
    value = data.pop(name, None)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a [{name}] table of settings, not {value!r}; see docs/data.md")
    return dict(value)


@dataclass
class PrepareConfig:
    """What ``prepare`` does; loaded from data.toml (sections [tokenizer], [check], [split])."""

    tokenizer: dict[str, Any] = field(default_factory=dict)
    check: dict[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.1
    split_seed: int = 0
    workers: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "PrepareConfig":
        data = dict(data or {})
        split = _table(data, "split")
        val_fraction = split.pop("val_fraction", data.pop("val_fraction", 0.1))
        seed = split.pop("seed", data.pop("split_seed", 0))
        workers = data.pop("workers", None)
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
            raise ValueError(f"split.val_fraction must be a number in [0, 1) such as 0.1, not {val_fraction!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"split.seed must be a whole number, not {seed!r}")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a whole number of at least 1, not {workers!r}")
        out = cls(tokenizer=_table(data, "tokenizer"), check=_table(data, "check"), val_fraction=float(val_fraction),
                  split_seed=seed, workers=workers)
        unknown = sorted(set(data) | set(split))
        if unknown:
            raise ValueError(f"unknown data setting(s) {', '.join(unknown)}; use [tokenizer], [check], [split] val_fraction/seed, workers")
        if not 0.0 <= out.val_fraction < 1.0:
            raise ValueError(f"split.val_fraction must be in [0, 1), not {out.val_fraction}")
        CheckPolicy.from_dict(out.check)  # validate early, before any work
        return out

    def check_policy(self, **overrides: Any) -> CheckPolicy:
        """The checks this config asks for, with a command's flags (``overrides``, None = not given) on
        top. The piano policy is [check]'s, else the tokenizer's (a saved tokenizer config, e.g. a
        checkpoint's, brings its own), else the default: one rule for `check` and `prepare`."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return CheckPolicy.from_dict({"piano_policy": self.tokenizer.get("piano_policy", DEFAULT_PIANO_POLICY),
                                      **self.check, **given})

    def tokenizer_for(self, policy: CheckPolicy):
        """The tokenizer of this config that extracts the piano the way ``policy``'s checks do."""
        from .tokenizer import PianoTokenizer

        return PianoTokenizer.from_config({**self.tokenizer, "piano_policy": policy.piano_policy})

    @classmethod
    def load(cls, path: str | Path) -> "PrepareConfig":
        import tomllib

        path = Path(path)
        try:
            return cls.from_dict(tomllib.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ValueError(f"the data config {path} does not exist; give a TOML file or leave --config out") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"the data config {path} is not valid TOML ({exc})") from None

    def to_dict(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer, "check": self.check,
                "split": {"val_fraction": self.val_fraction, "seed": self.split_seed}, "workers": self.workers}


@dataclass(frozen=True)
class Piece:
    index: int
    path: str
    split: str
    offset: int
    length: int
    bar_offset: int
    bar_count: int
    file_hash: str
    note_hash: str
    duration_s: float
    notes: int


@dataclass
class PrepareSummary:
    store: Path
    pieces: int
    tokens: int
    reused: int  # unchanged since the last finished prepare
    tokenized: int  # read and tokenized by this prepare
    skipped: int
    split: dict[str, int]
    elapsed_s: float
    resumed: int = 0  # finished by an earlier prepare that was cancelled

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["store"] = str(self.store)
        return out


# ---- locking: prepare writes under an exclusive lock, open reads under a shared one ---------------
@contextmanager
def _locked(folder: Path, exclusive: bool) -> Iterator[None]:
    """``filelock``'s reader/writer lock on ``folder/.lock`` (released by the OS if its holder dies).

    Readers share it, so DDP ranks and the app open a store at once; a prepare waits for them and
    they wait for it, so nobody reads a store while its files are being replaced. One lock object
    per hold: filelock's per-path singleton would refuse a reader while a thread of this process writes.
    """
    from filelock import ReadWriteLock

    folder.mkdir(parents=True, exist_ok=True)
    lock = ReadWriteLock(folder / ".lock", is_singleton=False)
    try:
        with lock.write_lock() if exclusive else lock.read_lock():
            yield
    finally:
        lock.close()  # its SQLite connection, now rather than whenever it is collected


def split_of(note_hash: str, val_fraction: float, seed: int) -> str:
    """'val' for a stable ``val_fraction`` of pieces, chosen by note content (not path or order)."""
    return "val" if _split_draw(note_hash, seed) < val_fraction else "train"


def _split_draw(note_hash: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{note_hash}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- prepare ------------------------------------------------------------------------------------
def prepare(
    folder: str | Path,
    out: str | Path,
    config: PrepareConfig | dict | None = None,
    on_progress: FileProgress | None = None,
) -> PrepareSummary:
    """Check and tokenize the MIDI files under ``folder`` into the store ``out`` (incremental).

    ``on_progress(done, total, record)`` runs after each file (reused files count as done at once).
    Raises ``ScanError`` when the folder is missing, ``StoreError`` when ``out`` cannot be a store.
    """
    began = time.perf_counter()
    config = config if isinstance(config, PrepareConfig) else PrepareConfig.from_dict(config)
    policy, tokenizer = _policy_and_tokenizer(config)
    tokenizer_config = tokenizer.to_config()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StoreError(f"{out} is a file; give a folder for the token store")
    if out.is_dir() and any(out.iterdir()) and not (out / "index.json").exists() and not (out / ".lock").exists():
        raise StoreError(f"{out} is a non-empty folder that is not a token store; give an empty or new folder")
    files = find_midi_files(folder)

    with _locked(out, exclusive=True):
        old = _load_previous(out, tokenizer_config)
        pending = _Pending(out, tokenizer_config)
        hashes = {}
        for path in files:
            try:
                hashes[path] = _file_hash(path)
            except OSError:
                hashes[path] = None  # the worker reports it as unreadable
        records: dict[Path, FileRecord] = {}
        fresh_tokens: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
        todo = []
        done = resumed = 0
        for path in files:
            reused = old.get(hashes[path]) if hashes[path] else None
            kept = pending.get(hashes[path]) if hashes[path] and reused is None else None
            if reused is not None:
                reasons = [r for r in reused.reasons if not r.startswith("duplicate")]
                status = "ok" if reused.status == "warning" and not reasons else reused.status
                record = replace(reused, path=str(path), reasons=reasons, status=status)
            elif kept is not None:
                record, ids, bars = kept
                record.path = str(path)
                if record.usable:
                    fresh_tokens[path] = (ids, bars)
                resumed += 1
            else:
                todo.append(path)
                continue
            records[path] = record
            done += 1
            if on_progress is not None:
                on_progress(done, len(files), record)

        def collect(index: int, record: FileRecord, ids, bars) -> None:
            nonlocal done
            path = todo[index]
            records[path] = record
            if ids is not None and record.usable:
                fresh_tokens[path] = (ids, bars)
            pending.add(hashes[path], record, ids, bars)  # before the callback: a cancel keeps this file
            done += 1
            if on_progress is not None:
                on_progress(done, len(files), record)

        run_inspections(todo, policy, workers=config.workers, tokenizer_config=tokenizer_config, want_ids=True, on_result=collect)

        ordered = [records[p] for p in files]
        mark_duplicates(ordered)
        chunks, bar_chunks, pieces = [], [], []
        offset = bar_offset = 0
        for path, record in zip(files, ordered):
            if not record.usable or record.is_duplicate:
                continue
            if path in fresh_tokens:
                ids, bars = fresh_tokens[path]
            else:
                ids, bars = old.tokens(hashes[path])
            stats = record.stats
            pieces.append({
                "path": str(path), "file_hash": stats.file_hash, "note_hash": stats.note_hash,
                "split": split_of(stats.note_hash, config.val_fraction, config.split_seed),
                "offset": offset, "length": int(len(ids)), "bar_offset": bar_offset, "bar_count": int(len(bars)),
                "duration_s": stats.duration_s or 0.0, "notes": stats.notes or 0,
            })
            chunks.append(np.asarray(ids))
            bar_chunks.append(np.asarray(bars, dtype=np.int64))
            offset += len(ids)
            bar_offset += len(bars)
        _ensure_validation_piece(pieces, config)
        dtype = np.int16 if tokenizer.vocab_size < 2**15 else np.int32
        tokens = np.concatenate(chunks).astype(dtype) if chunks else np.zeros(0, dtype)
        bars_flat = np.concatenate(bar_chunks) if bar_chunks else np.zeros(0, np.int64)
        old.close()

        report = ScanReport(ordered, summarize(ordered, root=str(folder), piano_policy=policy.piano_policy))
        split_counts = {s: sum(1 for p in pieces if p["split"] == s) for s in SPLITS}
        split_tokens = {s: int(sum(p["length"] for p in pieces if p["split"] == s)) for s in SPLITS}
        index = {
            "format": STORE_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": str(Path(folder).resolve()),
            "split": {"val_fraction": config.val_fraction, "seed": config.split_seed, "pieces": split_counts, "tokens": split_tokens},
            "totals": {"pieces": len(pieces), "tokens": int(len(tokens)), "bars": int(len(bars_flat)),
                       "hours": round(sum(p["duration_s"] for p in pieces) / 3600.0, 4)},
            "pieces": pieces,
        }
        write_with(out / "tokens.npy", lambda tmp: np.save(tmp, tokens))
        write_with(out / "bars.npy", lambda tmp: np.save(tmp, bars_flat))
        write_atomic(out / "tokenizer.json", json.dumps(tokenizer_config, indent=1))
        write_atomic(out / "report.json", report.to_json())
        write_atomic(out / "config.json", json.dumps(config.to_dict(), indent=1))
        write_atomic(out / "index.json", json.dumps(index, indent=1))  # last: the commit point
        pending.clear()

    return PrepareSummary(
        store=out, pieces=len(pieces), tokens=int(len(tokens)), reused=len(files) - len(todo) - resumed,
        tokenized=sum(p in fresh_tokens for p in todo), skipped=len(files) - len(pieces),
        split=split_counts, elapsed_s=round(time.perf_counter() - began, 3), resumed=resumed,
    )


def _policy_and_tokenizer(config: PrepareConfig):
    """(check policy, tokenizer) of a prepare config (``PrepareConfig.check_policy``'s rule)."""
    policy = config.check_policy()
    return policy, config.tokenizer_for(policy)


def _ensure_validation_piece(pieces: list[dict], config: PrepareConfig) -> None:
    """A small corpus may draw no validation piece; then the piece with the lowest draw goes there,
    which is as deterministic as the draw itself."""
    if config.val_fraction <= 0 or len(pieces) < 2 or any(p["split"] == "val" for p in pieces):
        return
    lowest = min(pieces, key=lambda p: _split_draw(p["note_hash"], config.split_seed))
    lowest["split"] = "val"


class _Pending:
    """Per-file results of a prepare that has not committed yet, one file each, written as each
    file finishes: a cancelled or killed prepare resumes where it stopped. Kept per tokenizer
    config (another config starts over) and removed once the store is committed."""

    def __init__(self, out: Path, tokenizer_config: dict):
        self.folder = out / "pending"
        stamp = json.dumps(tokenizer_config, sort_keys=True)
        try:
            current = (self.folder / "tokenizer.json").read_text(encoding="utf-8")
        except OSError:
            current = None
        if current != stamp:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir()
            write_atomic(self.folder / "tokenizer.json", stamp)

    def add(self, file_hash: str | None, record: FileRecord, ids, bars) -> None:
        if not file_hash or not record.stats.file_hash:
            return  # a timeout or a crash: worth another try next time
        buffer = io.BytesIO()
        empty = np.zeros(0, np.int64)
        np.savez(buffer, record=np.array(json.dumps(record.to_dict())),
                 ids=empty if ids is None else np.asarray(ids), bars=empty if bars is None else np.asarray(bars, np.int64))
        write_atomic(self.folder / f"{file_hash}.npz", buffer.getvalue())

    def get(self, file_hash: str) -> tuple[FileRecord, np.ndarray, np.ndarray] | None:
        try:
            with np.load(self.folder / f"{file_hash}.npz", allow_pickle=False) as saved:
                return FileRecord.from_dict(json.loads(str(saved["record"]))), saved["ids"], saved["bars"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # not there, or cut short by a kill mid-write: inspect again

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class _Previous:
    """What an existing store can give back to an incremental prepare, keyed by file hash."""

    def __init__(self, store: "TokenStore | None", records: dict[str, FileRecord]):
        self._store = store
        self._records = records
        self._by_hash = {p.file_hash: p for p in (store.pieces() if store else [])}

    def get(self, file_hash: str) -> FileRecord | None:
        record = self._records.get(file_hash)
        if record is None:
            return None
        if record.usable and file_hash not in self._by_hash:
            return None  # was a duplicate last time; inspect again (its twin may be gone)
        return record

    def tokens(self, file_hash: str) -> tuple[np.ndarray, np.ndarray]:
        piece = self._by_hash[file_hash]
        return np.array(self._store.tokens(piece)), np.array(self._store.bars(piece))

    def close(self) -> None:
        self._store = None


def _load_previous(out: Path, tokenizer_config: dict) -> _Previous:
    if not (out / "index.json").exists():
        return _Previous(None, {})
    try:
        store = TokenStore(out)
        if store.tokenizer_config != tokenizer_config:
            return _Previous(None, {})  # another vocabulary: every file is tokenized again
        report = store.report
    except (StoreError, OSError, ValueError, KeyError, TypeError):
        return _Previous(None, {})
    records = {r.stats.file_hash: r for r in report.files if r.stats.file_hash}
    return _Previous(store, records)


# ---- reading ------------------------------------------------------------------------------------
class TokenStore:
    """A prepared store, read-only; token arrays are memory-mapped (cheap to open in every worker)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index_path = self.path / "index.json"
        if not index_path.exists():
            raise StoreError(f"{self.path} is not a token store (no index.json); run `pianomuse-tui --headless prepare` first")
        try:
            self.index = json.loads(index_path.read_text(encoding="utf-8"))
            self.tokenizer_config = json.loads((self.path / "tokenizer.json").read_text(encoding="utf-8"))
            self._tokens = np.load(self.path / "tokens.npy", mmap_mode="r")
            self._bars = np.load(self.path / "bars.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise StoreError(f"the token store {self.path} is damaged ({exc}); prepare it again") from None
        if self.index.get("format") != STORE_FORMAT:
            raise StoreError(f"{self.path} holds a store of format {self.index.get('format')!r}, not {STORE_FORMAT}; prepare it again")
        if len(self._tokens) != self.index["totals"]["tokens"]:
            raise StoreError(f"the token store {self.path} is incomplete; prepare it again")
        self._pieces = [Piece(index=i, **{k: p[k] for k in Piece.__dataclass_fields__ if k != "index"})
                        for i, p in enumerate(self.index["pieces"])]

    @classmethod
    def open(cls, path: str | Path) -> "TokenStore":
        path = Path(path)
        if not path.is_dir():
            raise StoreError(f"the token store {path} does not exist; run `pianomuse-tui --headless prepare DIR --out {path}` first")
        with _locked(path, exclusive=False):
            return cls(path)

    @cached_property
    def tokenizer(self):
        from .tokenizer import PianoTokenizer

        return PianoTokenizer.from_config(self.tokenizer_config)

    @cached_property
    def report(self) -> ScanReport:
        return ScanReport.read(self.path / "report.json")

    def pieces(self, split: str | None = None) -> list[Piece]:
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use 'train' or 'val'")
        return [p for p in self._pieces if split is None or p.split == split]

    def piece(self, index: int) -> Piece:
        return self._pieces[index]

    def tokens(self, piece: Piece | int) -> np.ndarray:
        """The piece's token ids (a read-only memory-mapped view; no BOS/EOS)."""
        piece = self._pieces[piece] if isinstance(piece, int) else piece
        return self._tokens[piece.offset: piece.offset + piece.length]

    def bars(self, piece: Piece | int) -> np.ndarray:
        """Bar starts of the piece, as token offsets within ``tokens(piece)``."""
        piece = self._pieces[piece] if isinstance(piece, int) else piece
        return self._bars[piece.bar_offset: piece.bar_offset + piece.bar_count]

    def num_tokens(self, split: str | None = None) -> int:
        return int(sum(p.length for p in self.pieces(split)))

    def __len__(self) -> int:
        return len(self._pieces)

    def __repr__(self) -> str:
        t = self.index["totals"]
        return f"TokenStore({self.path}, pieces={t['pieces']}, tokens={t['tokens']})"


# ---- the bundled corpus, prepared once ------------------------------------------------------------
def cache_dir() -> Path:
    """Where PianoMuse keeps prepared data: $PIANOMUSE_CACHE, else .cache/pianomuse in the checkout."""
    from engine.paths import REPO_ROOT

    env = os.environ.get("PIANOMUSE_CACHE")
    return Path(env) if env else REPO_ROOT / ".cache" / "pianomuse"


def store_for(folder: str | Path, config: PrepareConfig | dict | None = None) -> Path:
    """Where the store of ``folder`` prepared with ``config`` lives when no --out is given.

    The one rule for prepare, train and eval: the name hashes the folder and the settings that
    change the store's content (the tokenizer as it resolves, the checks, the split), so
    `prepare FOLDER` then `train --data FOLDER` or `eval --data FOLDER` open the same store, and
    a config that spells the defaults out is the same store as one that leaves them out.
    """
    from engine.paths import CORPUS_DIR

    config = config if isinstance(config, PrepareConfig) else PrepareConfig.from_dict(config)
    policy, tokenizer = _policy_and_tokenizer(config)
    folder = Path(folder).expanduser().resolve()
    settings = {"source": str(folder), "tokenizer": tokenizer.to_config(), "check": asdict(policy),
                "split": {"val_fraction": config.val_fraction, "seed": config.split_seed}}
    tag = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=4).hexdigest()
    stem = "demo" if folder == CORPUS_DIR.resolve() else (folder.name or "corpus")
    return cache_dir() / "stores" / f"{stem}-{tokenizer.tokenization}-{tag}"


def default_store(config: PrepareConfig | dict | None = None, on_progress: FileProgress | None = None) -> Path:
    """Path of the bundled demo corpus prepared with ``config``; prepares (incrementally) if needed.

    Stores for different tokenizer/check/split settings live side by side, named by a hash of
    the settings, so switching settings never re-tokenizes a store another run uses.
    """
    from engine.paths import CORPUS_DIR

    config = config if isinstance(config, PrepareConfig) else PrepareConfig.from_dict(config)
    out = store_for(CORPUS_DIR, config)
    if not _is_current(out, config):
        prepare(CORPUS_DIR, out, config, on_progress=on_progress)
    return out


def _is_current(out: Path, config: PrepareConfig) -> bool:
    """True when ``out`` was prepared from the bundled corpus as it is now (same files, same bytes)
    with the tokenizer ``config`` resolves to today (a MidiTok or default change means re-prepare)."""
    from engine.paths import CORPUS_DIR

    try:
        store = TokenStore.open(out)
        report = store.report
    except (StoreError, OSError, ValueError, KeyError, TypeError):
        return False
    if store.tokenizer_config != _policy_and_tokenizer(config)[1].to_config():
        return False
    known = {r.path: r.stats.file_hash for r in report.files}
    try:
        files = find_midi_files(CORPUS_DIR)
    except ScanError:
        return False
    if set(known) != {str(p) for p in files}:
        return False
    # sizes and mtimes would be faster, but a checkout resets mtimes; the corpus is small
    return all(known[str(p)] == _file_hash(p) for p in files)

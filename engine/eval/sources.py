"""What the ``eval`` command evaluates: a checkpoint and a data set, resolved with clear errors.

The checkpoint defaults to the bundled model; the data to the bundled corpus. Data is always
read with the checkpoint's own tokenizer: a token store must have been prepared with it, and a
MIDI folder is prepared with it (incrementally, into ``store_for``: the store `prepare FOLDER` made,
when the tokenizers agree).
"""
from __future__ import annotations

from pathlib import Path

from engine.data.check import FileProgress
from engine.rundir import resolve_checkpoint

from .report import EvalData


class EvalError(RuntimeError):
    """Something the user can fix; the message is one sentence saying what to do."""


def _prepare_config(tokenizer_config: dict | None):
    from engine.data.store import PrepareConfig

    return PrepareConfig(tokenizer=dict(tokenizer_config or {}))


def open_store(data: str | Path | None, tokenizer_config: dict | None,
               on_progress: FileProgress | None = None):
    """The token store to evaluate on, tokenized like the checkpoint (prepared if need be)."""
    from engine.data.check import ScanError
    from engine.data.store import StoreError, TokenStore, default_store, prepare, store_for
    from engine.data.tokenizer import PianoTokenizer

    wanted = PianoTokenizer.from_config(tokenizer_config) if tokenizer_config else None
    try:
        if data is None:
            # store_for names stores by the resolved tokenizer: the default one shares the trainer's
            return TokenStore.open(default_store(_prepare_config(tokenizer_config), on_progress=on_progress))
        data = Path(data)
        if not data.exists():
            raise EvalError(f"--data {data} does not exist; pass a token store or a folder of MIDI files.")
        if (data / "index.json").is_file():
            store = TokenStore.open(data)
            if wanted is not None and store.tokenizer != wanted:
                raise EvalError(f"the token store {data} was tokenized differently from the checkpoint; "
                                "pass the MIDI folder instead and it will be prepared with the checkpoint's tokenizer.")
            return store
        if not data.is_dir():
            raise EvalError(f"--data {data} is neither a token store nor a folder of MIDI files; pass one of those.")
        out = store_for(data, _prepare_config(tokenizer_config))
        prepare(data, out, _prepare_config(tokenizer_config), on_progress=on_progress)
        return TokenStore.open(out)
    except (StoreError, ScanError) as exc:
        raise EvalError(str(exc)) from None


def store_eval_data(store) -> EvalData:
    """Validation pieces (with bar starts) and training pieces of a store, each wrapped in BOS ... EOS."""
    tok = store.tokenizer

    def wrapped(piece) -> list[int]:
        return [tok.bos_id, *store.tokens(piece).tolist(), tok.eos_id]

    validation = []
    for piece in store.pieces("val"):
        bars = [int(b) + 1 for b in store.bars(piece)]  # +1: the BOS in front
        validation.append((piece.path, wrapped(piece), bars or None))
    if not validation:
        raise EvalError(f"the token store {store.path} has no validation pieces; prepare it with a split.val_fraction above 0 "
                        "or with more than one piece.")
    training = [(piece.path, wrapped(piece)) for piece in store.pieces("train")]
    return EvalData(tok, validation, training, description=f"{store.path} ({len(validation)} validation, "
                                                          f"{len(training)} training pieces)")


def load_eval_inputs(checkpoint: str | Path | None, data: str | Path | None, device: str = "cpu",
                     on_progress: FileProgress | None = None):
    """(model, EvalData, checkpoint path) for the ``eval`` command; every user error is an ``EvalError``."""
    import torch

    from engine.model import CheckpointError, load_checkpoint

    path = resolve_checkpoint(checkpoint, EvalError)
    try:
        torch.empty(0, device=device)
    except (RuntimeError, ValueError) as exc:
        raise EvalError(f"the device {device!r} cannot be used here ({str(exc).splitlines()[0]}); pass --device cpu.") from None
    try:
        model, sidecar = load_checkpoint(path, device=device)
    except CheckpointError as exc:
        raise EvalError(str(exc)) from None
    store = open_store(data, sidecar.get("tokenizer"), on_progress=on_progress)
    transpose_range = trained_transpose_range(sidecar)
    vocab = store.tokenizer.vocab_size
    if model.config.vocab_size != vocab:
        raise EvalError(f"the checkpoint's vocabulary ({model.config.vocab_size} tokens) does not match the data's "
                        f"tokenizer ({vocab}); evaluate it on data prepared with the tokenizer it was trained with.")
    eval_data = store_eval_data(store)
    eval_data.trained_transpose_range = transpose_range
    return model, eval_data, path


def trained_transpose_range(sidecar: dict) -> int | None:
    """The transposition range (semitones) the checkpoint was trained with, read from its run's
    config.toml or the config it names; None when neither can be read."""
    from engine.paths import REPO_ROOT
    from engine.train.config import TrainConfig

    extra = sidecar.get("extra") or {}
    candidates = []
    if extra.get("run_dir"):
        candidates.append(Path(extra["run_dir"]) / "config.toml")
    if isinstance(extra.get("config"), str):
        candidates.append(REPO_ROOT / extra["config"])
    for path in candidates:
        if path.is_file():
            try:
                data = TrainConfig.from_toml(path).data
            except Exception:  # noqa: BLE001  (an unreadable config: fall back to the default)
                continue
            return data.transpose_range if data.augment else 0
    return None

"""Shared set-up for the trainer tests: a small token store cut from the real demo corpus and a
micro configuration that trains in a fraction of a second per step on 2 CPU cores."""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from engine.paths import CORPUS_DIR

# a few short chorales and one short piano piece: enough for train and validation pieces
STORE_FILES = ["chorales/bwv281.mid", "chorales/bwv286.mid", "chorales/bwv324.mid", "chorales/bwv101_7.mid",
               "chorales/bwv104_6.mid", "chorales/bwv11_6.mid", "piano/schoenberg_op19_no2.mid"]


@functools.lru_cache(maxsize=1)
def small_store() -> Path:
    """Prepare the files above (real MIDI, real tokenizer) into a temporary token store, once."""
    from engine.data.store import PrepareConfig, prepare

    root = Path(tempfile.mkdtemp(prefix="pianomuse-train-test-"))
    atexit.register(shutil.rmtree, root, True)
    midi = root / "midi"
    midi.mkdir()
    for name in STORE_FILES:
        shutil.copy(CORPUS_DIR / name, midi / Path(name).name)
    prepare(midi, root / "store", PrepareConfig(val_fraction=0.25, workers=1))
    return root / "store"


def micro_overrides(store: Path, run_root: Path, **extra) -> list[str]:
    """A 1-layer, 64-wide model on 96-token windows: the smallest run that is still a real run."""
    base = {
        "data.path": str(store), "data.ctx_len": 96, "data.context_bars": 1, "data.completion_bars": 1,
        "data.stride_bars": 1, "data.augment": "false",
        "model.n_layer": 1, "model.n_embd": 64, "model.head_size": 32,
        "train.batch_size": 4, "train.micro_batch_size": 4, "train.device": "cpu", "train.max_steps": 4,
        "optim.lr": 3e-3, "optim.warmup_steps": 0,
        "eval.val_every": 0, "eval.val_max_batches": 1, "eval.audition_every": 0,
        "eval.audition_prompt_tokens": 24, "eval.audition_tokens": 16,
        "run.root": str(run_root), "run.log_every": 1, "run.checkpoint_every": 0, "run.name": "test",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]

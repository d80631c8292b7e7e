"""The bundled model's promises (issue 8): what is committed in assets/models/ and that it is the default.

A replacement model must keep them: a v8 (x080) checkpoint of at most ~16 MB in bf16 with its
tokenizer, training config, metrics and evaluation beside it, exported at its best validation step.
"""
from __future__ import annotations

import json
import math
import tomllib

from engine.data.tokenizer import PianoTokenizer
from engine.model.checkpoint import inspect_checkpoint
from engine.paths import MODELS_DIR
from engine.rundir import bundled_checkpoint, resolve_checkpoint

MAX_BYTES = 16 * 1024 * 1024


def test_the_bundled_model_is_a_small_bf16_v8_checkpoint_with_everything_beside_it():
    pth = bundled_checkpoint()
    assert pth is not None and pth.parent == MODELS_DIR
    assert resolve_checkpoint(None) == pth  # the default of generate, eval and the Generate pane
    found = inspect_checkpoint(pth)
    assert found["config"].arch == "x080" and found["dtype"] == "bfloat16"
    assert found["file_bytes"] <= MAX_BYTES
    sidecar = found["sidecar"]
    tokenizer = PianoTokenizer.from_config(sidecar["tokenizer"])
    assert tokenizer.vocab_size == found["config"].vocab_size
    extra = sidecar["extra"]
    assert extra["trained_with"] and extra["data"] and extra["step"] > 0

    train = tomllib.loads(pth.with_suffix(".train.toml").read_text())
    assert train["model"]["arch"] == "x080" and train["data"]["augment"] is True

    # exported where validation loss was lowest (of the weights or, with train.ema_decay, of their
    # moving average: the sidecar says which), and training went on past it (it stopped improving)
    records = [json.loads(line) for line in pth.with_suffix(".metrics.jsonl").read_text().splitlines() if line.strip()]
    val = [r for r in records if r.get("kind") == "val"]
    lowest = lambda r: min(r["val_loss"], r.get("ema_val_loss", math.inf))  # noqa: E731
    best = min(val, key=lowest)
    assert best["step"] == extra["step"] and math.isclose(lowest(best), extra["val_loss"])
    assert extra.get("weights", "raw") == ("ema" if best.get("ema_val_loss", math.inf) < best["val_loss"] else "raw")
    assert max(r["step"] for r in val) > best["step"]

    report = json.loads(pth.with_suffix(".eval.json").read_text())
    assert report["likelihood"]["bits_per_note"] > 0
    assert report["validity"]["invalid_token_rate"] == 0 and report["validity"]["stuck_note_rate"] == 0

"""The bundled demo corpus is the default everywhere, and a checkpoint always knows its vocabulary.

`check`, `prepare` and the trainer's data resolution are run with no folder; the prepare and
train cases reuse the demo store the other data tests build (the same cache, unchanged corpus).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_helpers import demo_store_path
from engine.paths import CORPUS_DIR
from pianomuse_tui.cli import app


@pytest.mark.slow
def test_check_with_no_folder_scans_the_demo_corpus(tmp_path):
    config = tmp_path / "data.toml"
    config.write_text("[check]\ntokenize = false\n")  # statuses only: the corpus is what is checked here
    report = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["--headless", "check", "--json", str(report), "--config", str(config), "--workers", "2"])
    assert result.exit_code == 0, result.output
    files = json.loads(report.read_text())["files"]
    assert sorted(Path(f["path"]) for f in files) == sorted(CORPUS_DIR.rglob("*.mid"))
    assert all(f["status"] != "error" for f in files)


def test_prepare_and_train_with_no_folder_use_the_demo_store(monkeypatch):
    from engine.train.config import TrainConfig
    from engine.train.feed import resolve_store

    store = demo_store_path()
    monkeypatch.setenv("PIANOMUSE_CACHE", str(store.parents[1]))
    result = CliRunner().invoke(app, ["--headless", "prepare"])
    assert result.exit_code == 0, result.output
    n = len(list(CORPUS_DIR.rglob("*.mid")))
    assert f"store {store}:" in " ".join(result.output.split()) and f"0 tokenized, {n} unchanged" in result.output
    cfg = TrainConfig()
    assert cfg.data.path == "" and resolve_store(cfg) == store


@pytest.mark.slow
def test_a_checkpoint_carries_the_vocabulary_it_was_trained_with(tmp_path):
    from engine import PianoMuseRWKV
    from engine.data.tokenizer import PianoTokenizer
    from engine.model import RWKV7, ModelConfig, load_checkpoint, save_checkpoint

    tokenizer = PianoTokenizer.from_config({"tokenization": "TSD", "num_velocities": 16, "piano_policy": "all"})
    model = RWKV7(ModelConfig(n_layer=1, n_embd=64, head_size=32, vocab_size=tokenizer.vocab_size))
    path = save_checkpoint(model, tmp_path / "music", tokenizer=tokenizer.to_config())
    _, sidecar = load_checkpoint(path)
    again = PianoTokenizer.from_config(sidecar["tokenizer"])
    assert again == tokenizer and again.vocab_size == model.config.vocab_size
    assert len(again.kind_ids("Velocity")) == 16 and again.piano_policy == "all"
    assert PianoTokenizer.from_config(PianoMuseRWKV(path).tokenizer_config) == tokenizer


def test_prepare_folder_then_train_and_eval_on_the_folder_tokenize_once(monkeypatch, tmp_path):
    """`prepare FOLDER` then `train --data FOLDER` (and `eval --data FOLDER`) share one store:
    the second and third read no MIDI file and make no second store."""
    import shutil

    from engine.data import store as store_module
    from engine.data.tokenizer import PianoTokenizer
    from engine.eval.sources import open_store
    from engine.train.config import TrainConfig
    from engine.train.feed import resolve_store

    folder = tmp_path / "my piano"
    folder.mkdir()
    for f in sorted((CORPUS_DIR / "piano").glob("*.mid"))[:3]:
        shutil.copy(f, folder / f.name)
    monkeypatch.setenv("PIANOMUSE_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["--headless", "prepare", str(folder), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "3 tokenized, 0 unchanged" in result.output
    (store,) = (tmp_path / "cache" / "stores").iterdir()

    inspected = []
    real = store_module.run_inspections
    monkeypatch.setattr(store_module, "run_inspections", lambda paths, *a, **k: (inspected.extend(paths), real(paths, *a, **k)))
    cfg = TrainConfig()
    cfg.data.path = str(folder)
    assert resolve_store(cfg) == store
    assert open_store(folder, PianoTokenizer().to_config()).path == store
    assert inspected == [] and list((tmp_path / "cache" / "stores").iterdir()) == [store]

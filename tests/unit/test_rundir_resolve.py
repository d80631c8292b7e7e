"""engine.rundir.resolve_checkpoint: the one rule, for generate, eval and the app, that turns a
--checkpoint argument into a .pth file, on the folder layouts the trainer really writes."""
from __future__ import annotations

import pytest
import torch

import engine.paths
from engine.eval.sources import EvalError
from engine.generate import GenerationError
from engine.model import ModelConfig, RWKV7, save_checkpoint
from engine.rundir import resolve_checkpoint, write_checkpoint


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return RWKV7(ModelConfig(arch="x070", n_layer=1, n_embd=64, vocab_size=64, head_size=32))


def _run(tmp_path, model, steps):
    """A run folder with complete checkpoints, written by the trainer's own writer."""
    run = tmp_path / "run"
    for step in steps:
        write_checkpoint(run, step, lambda stem, sums: save_checkpoint(model, stem, sums=sums), {"step": step}, keep=10)
    return run


def test_files_folders_and_runs_resolve_to_the_model_file(tmp_path, tiny_model):
    run = _run(tmp_path, tiny_model, [5, 10])
    newest = run / "checkpoints" / "step-00000010" / "model.pth"
    assert resolve_checkpoint(run) == newest  # a run folder: its `latest`
    assert resolve_checkpoint(run / "checkpoints") == newest  # its checkpoints/ folder
    older = run / "checkpoints" / "step-00000005"
    assert resolve_checkpoint(older) == older / "model.pth"  # a checkpoint folder
    assert resolve_checkpoint(older / "model.pth") == older / "model.pth"
    assert resolve_checkpoint(str(older / "model")) == older / "model.pth"  # NAME, as save_checkpoint takes it
    # `latest` naming a checkpoint whose save never finished: the newest complete one is used
    (run / "checkpoints" / "step-00000010" / "trainer.pt").unlink()
    assert resolve_checkpoint(run) == older / "model.pth"


def test_the_bundled_model_is_the_default(tmp_path, monkeypatch, tiny_model):
    models = tmp_path / "models"
    save_checkpoint(tiny_model, models / "b-small")
    (models / "a-orphan.pth").write_bytes(b"")  # no sidecar: not a bundled model
    monkeypatch.setattr(engine.paths, "MODELS_DIR", models)
    assert resolve_checkpoint(None) == models / "b-small.pth"
    monkeypatch.setattr(engine.paths, "MODELS_DIR", tmp_path / "no-models")
    with pytest.raises(GenerationError, match=r"no bundled model .* pass --checkpoint PATH"):
        resolve_checkpoint(None, GenerationError)


@pytest.mark.parametrize("error", [GenerationError, EvalError])
def test_each_caller_gets_its_own_error_type_and_one_sentence(tmp_path, error):
    (tmp_path / "empty-run").mkdir()
    for target, words in ((tmp_path / "nope.pth", "does not exist"), (tmp_path / "empty-run", "holds none")):
        with pytest.raises(error) as caught:
            resolve_checkpoint(target, error)
        sentence = str(caught.value)
        assert f"no checkpoint at {target}" in sentence and words in sentence
        assert sentence.endswith(".") and ". " not in sentence

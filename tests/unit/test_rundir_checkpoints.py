"""Checkpoint folders: atomic publication, the ``latest`` marker, pruning, and resume look-up."""
from __future__ import annotations

import os

import pytest
import torch

from engine.model import RWKV7, ModelConfig, load_checkpoint, save_checkpoint
from engine import rundir as ckpt


@pytest.fixture(scope="module")
def model():
    return RWKV7(ModelConfig(n_layer=1, n_embd=64, vocab_size=32, head_size=32))


def _write(run, step, model, **kw):
    return ckpt.write_checkpoint(run, step, lambda stem, sums: save_checkpoint(model, stem, sums=sums), {"step": step}, **kw)


def test_write_publishes_complete_folder_and_latest(tmp_path, model):
    run = tmp_path / "run"
    (run).mkdir()
    (run / "config.toml").write_text("")
    first = _write(run, 5, model)
    assert first.name == "step-00000005" and ckpt.is_complete(first)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000005"
    loaded, sidecar = load_checkpoint(first)  # the model inside is a normal checkpoint
    assert sidecar["model"] == model.config.to_dict()
    torch.testing.assert_close(loaded.state_dict()["head.weight"], model.state_dict()["head.weight"])
    assert ckpt.load_trainer_state(first) == {"step": 5}
    assert ckpt.find_resume_point("auto", run) == ckpt.ResumePoint(run, first)
    assert ckpt.find_resume_point("auto", tmp_path) == ckpt.ResumePoint(run, first)  # the runs folder above it
    assert ckpt.find_resume_point(str(first), tmp_path / "elsewhere") == ckpt.ResumePoint(run, first)


def test_pruning_keeps_the_newest_and_stale_temp_folders_go(tmp_path, model):
    run = tmp_path / "run"
    stale = run / "checkpoints" / ".tmp-step-00000009-999999"  # a save killed mid-way by another process
    stale.mkdir(parents=True)
    for step in (1, 2, 3, 4):
        _write(run, step, model, keep=2)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [stale.name, "latest", "step-00000003", "step-00000004"]
    # the leftovers go once a trainer holds the run's lock (no other process can be saving then)
    with ckpt.RunLock(run):
        assert ckpt.sweep_leftovers(run) == [stale]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-00000003", "step-00000004"]


def test_interrupted_save_leaves_previous_checkpoint_usable(tmp_path, model):
    run = tmp_path / "run"
    good = _write(run, 1, model)

    def crash(stem, sums):
        save_checkpoint(model, stem, sums=sums)
        raise OSError("disk full")  # the failure happens after files exist, before publication

    with pytest.raises(OSError):
        ckpt.write_checkpoint(run, 2, crash, {"step": 2})
    assert ckpt.latest_checkpoint(run) == good
    assert not (run / "checkpoints" / "step-00000002").exists()


def test_latest_marker_missing_or_dangling_falls_back(tmp_path, model):
    run = tmp_path / "run"
    _write(run, 1, model)
    second = _write(run, 2, model)
    (run / "checkpoints" / "latest").write_text("step-00000077\n")
    assert ckpt.latest_checkpoint(run) == second
    os.remove(run / "checkpoints" / "latest")
    assert ckpt.latest_checkpoint(run) == second


def test_resume_errors_are_one_sentence(tmp_path):
    with pytest.raises(ckpt.RunError, match="there is no run to resume in"):
        ckpt.find_resume_point("auto", tmp_path)
    with pytest.raises(ckpt.RunError, match="neither a run directory nor a checkpoint"):
        ckpt.find_resume_point(str(tmp_path / "nope"), tmp_path)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.toml").write_text("")
    with pytest.raises(ckpt.RunError, match="has no checkpoint yet"):
        ckpt.find_resume_point(str(tmp_path / "r"), tmp_path)

"""Data parallel training for real: 2 processes over gloo on CPU (launched with torchrun) give
the same losses as 1 process with the same global batch, and the run resumes on 1 process."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from train_helpers import micro_overrides, small_store

from engine.train.config import load_config
from engine.rundir import read_metrics
from engine.train.trainer import run_training


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_train(run_root: Path, settings: dict) -> subprocess.CompletedProcess:
    """`pianomuse-tui --headless train` on 2 gloo processes under torchrun."""
    words = []
    for item in micro_overrides(small_store(), run_root, **settings):
        key, value = item.split("=", 1)
        words += [f"--{key}", value]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "-m", "pianomuse_tui.cli", "--headless", "train", "--preset", "tiny", *words],
        capture_output=True, text=True, timeout=300, env=env,
    )


def _train_losses(run_dir: Path) -> dict[int, float]:
    return {r.step: r.loss for r in read_metrics(run_dir / "metrics.jsonl") if r.kind == "train"}


def test_two_gloo_processes_match_one_process(tmp_path):
    settings = {"train.max_steps": 2, "train.batch_size": 4, "train.micro_batch_size": 2, "data.augment": "true",
                "eval.val_every": 2, "train.ema_decay": 0.5}
    single = run_training(load_config(preset="tiny", overrides=micro_overrides(small_store(), tmp_path / "one", **settings)))

    out = _torchrun_train(tmp_path / "two", settings)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    (run,) = (tmp_path / "two").iterdir()  # only rank 0 created a run directory
    records = read_metrics(run / "metrics.jsonl")
    started = next(r for r in records if r.kind == "status" and r.state == "started")
    assert started.world_size == 2
    assert out.stdout.count("started run") == 1  # only rank 0 prints

    one, two = _train_losses(single.run_dir), _train_losses(run)
    assert sorted(one) == sorted(two) == [1, 2]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4)
    val_one = [r.val_loss for r in read_metrics(single.run_dir / "metrics.jsonl") if r.kind == "val"]
    val_two = [r.val_loss for r in records if r.kind == "val"]
    assert val_two == pytest.approx(val_one, rel=1e-4)
    # the weight average: one update per step on every process, validated like the weights
    ema_one = [r.ema_val_loss for r in read_metrics(single.run_dir / "metrics.jsonl") if r.kind == "val"]
    assert [r.ema_val_loss for r in records if r.kind == "val"] == pytest.approx(ema_one, rel=1e-4)

    # a checkpoint written by 2 processes resumes on 1 (the data position is global)
    resumed = run_training(load_config(run / "config.toml").with_overrides([f"run.resume={run}", "train.max_steps=3"]))
    assert resumed.status == "finished" and resumed.step == 3


def test_two_gloo_processes_with_fsdp_match_one_process_and_resume_on_one(tmp_path):
    """train.parallel=fsdp: parameters, gradients and AdamW state sharded over 2 processes give
    the single process's losses; validation, an audition and the checkpoint (full tensors, model
    and optimizer) work from the shards, and the run resumes on 1 process. The weight average is
    validated at step 2 and step 3 trains on the weights again (not on a stale gathered copy)."""
    settings = {"train.max_steps": 3, "train.batch_size": 4, "train.micro_batch_size": 1, "data.augment": "true",
                "eval.val_every": 2, "eval.audition_every": 2, "model.n_layer": 2, "train.ema_decay": 0.5}
    single = run_training(load_config(preset="tiny", overrides=micro_overrides(small_store(), tmp_path / "one", **settings)))

    out = _torchrun_train(tmp_path / "two", {**settings, "train.parallel": "fsdp"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    (run,) = (tmp_path / "two").iterdir()
    records = read_metrics(run / "metrics.jsonl")
    one, two = _train_losses(single.run_dir), _train_losses(run)
    assert sorted(one) == sorted(two) == [1, 2, 3]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4)
    val_one = [r.val_loss for r in read_metrics(single.run_dir / "metrics.jsonl") if r.kind == "val"]
    assert [r.val_loss for r in records if r.kind == "val"] == pytest.approx(val_one, rel=1e-4)
    ema_one = [r.ema_val_loss for r in read_metrics(single.run_dir / "metrics.jsonl") if r.kind == "val"]
    assert [r.ema_val_loss for r in records if r.kind == "val"] == pytest.approx(ema_one, rel=1e-4)
    audition = [r for r in records if r.kind == "audition"]
    assert audition and audition[0].path and Path(audition[0].path).is_file()

    # the checkpoint holds full tensors: the same shapes as the single-process one, and the
    # weights after 3 sharded steps match the single process's
    import torch

    from engine.model import load_checkpoint
    from engine import rundir as ckpt

    m_two, _ = load_checkpoint(ckpt.latest_checkpoint(run))
    m_one, _ = load_checkpoint(ckpt.latest_checkpoint(single.run_dir))
    for (name, a), (_, b) in zip(m_one.state_dict().items(), m_two.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    # the weight average is saved as full tensors too (gathered from the shards)
    ema_two = ckpt.load_trainer_state(ckpt.latest_checkpoint(run))["ema"]
    ema_one = ckpt.load_trainer_state(ckpt.latest_checkpoint(single.run_dir))["ema"]
    assert ema_two["updates"] == ema_one["updates"] == 3
    for name, w in ema_one["weights"].items():
        torch.testing.assert_close(ema_two["weights"][name], w, rtol=1e-4, atol=1e-5, msg=name)
    s_two = ckpt.load_trainer_state(ckpt.latest_checkpoint(run))["optimizer"]["state"]
    s_one = ckpt.load_trainer_state(ckpt.latest_checkpoint(single.run_dir))["optimizer"]["state"]
    assert s_two.keys() == s_one.keys()
    for i in s_one:
        assert s_two[i]["exp_avg"].shape == s_one[i]["exp_avg"].shape

    resumed = run_training(load_config(run / "config.toml").with_overrides([f"run.resume={run}", "train.max_steps=4"]))
    assert resumed.status == "finished" and resumed.step == 4

"""The trainer on a CUDA GPU: bf16 autocast over fp32 master weights, the CUDA WKV kernel,
memory metrics, and a checkpoint that loads back in fp32."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from train_helpers import micro_overrides, small_store

from engine.model import load_checkpoint
from engine.train.config import load_config
from engine.rundir import read_metrics
from engine.train.trainer import run_training


@pytest.mark.gpu
def test_bf16_training_on_cuda(tmp_path):
    cfg = load_config(preset="tiny", overrides=micro_overrides(
        small_store(), tmp_path / "runs", **{"train.device": "cuda", "train.max_steps": 6, "eval.val_every": 6,
                                             "eval.audition_every": 6, "model.head_size": 64, "model.n_embd": 128}))
    result = run_training(cfg)
    assert result.status == "finished"
    records = read_metrics(result.run_dir / "metrics.jsonl")
    started = next(r for r in records if r.kind == "status" and r.state == "started")
    assert started.precision == "bfloat16" and started.device.startswith("cuda")
    train = [r for r in records if r.kind == "train"]
    assert all(math.isfinite(r.loss) and r.mem_alloc > 0 and r.mem_peak >= r.mem_alloc for r in train)
    assert train[-1].loss < train[0].loss
    model, _ = load_checkpoint(result.checkpoint)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights were saved


@pytest.mark.gpu
def test_weight_averaging_on_cuda_validates_both_and_exports_the_better(tmp_path):
    """train.ema_decay on CUDA under bf16 autocast: the average lives in fp32 on the GPU, is validated
    beside the raw weights at every validation, is saved with the trainer state, and the export
    picks the lower of the two."""
    from engine import rundir
    from engine.metric_records import ValRecord
    from engine.train.export import best_validated_weights, load_best_weights

    cfg = load_config(preset="tiny", overrides=micro_overrides(
        small_store(), tmp_path / "runs", **{"train.device": "cuda", "train.max_steps": 6, "eval.val_every": 3,
                                             "run.checkpoint_every": 3, "train.ema_decay": 0.8,
                                             "eval.audition_every": 0, "model.head_size": 64, "model.n_embd": 128}))
    result = run_training(cfg)
    assert result.status == "finished"
    vals = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if isinstance(r, ValRecord)]
    assert [v.step for v in vals] == [3, 6]
    assert all(math.isfinite(v.val_loss) and math.isfinite(v.ema_val_loss) for v in vals)
    assert vals[-1].ema_val_loss != vals[-1].val_loss
    average = rundir.load_trainer_state(rundir.latest_checkpoint(result.run_dir))["ema"]
    assert average  # kept with the trainer state
    best = best_validated_weights(result.run_dir)
    kept = {rundir.checkpoint_step(p) for p in rundir.list_checkpoints(result.run_dir)}
    assert best.val_loss == pytest.approx(min(min(v.val_loss, v.ema_val_loss) for v in vals if v.step in kept))
    assert best.val_loss == (best.val.ema_val_loss if best.weights == "ema" else best.val.val_loss)
    model, _ = load_best_weights(best)
    assert all(torch.isfinite(p).all() for p in model.parameters())

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

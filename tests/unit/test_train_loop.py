"""Real trainer runs on a micro model and real corpus files: learning, the run directory and
metrics schema, auditions, exact resume, the NaN/inf guard, and stop requests."""
from __future__ import annotations

import json
import math
import threading

import pytest
import symusic
import torch

from engine.model import load_checkpoint
from engine import rundir as ckpt
from engine.train.config import load_config
from engine.rundir import read_metrics
from engine.metric_records import AuditionRecord, CheckpointRecord, StatusRecord, TrainRecord, ValRecord
from engine.train.trainer import run_training
from train_helpers import micro_overrides, small_store


def _config(tmp_path, **extra):
    return load_config(preset="tiny", overrides=micro_overrides(small_store(), tmp_path / "runs", **extra))


def _losses(run_dir, kind="train"):
    return {r.step: r.loss for r in read_metrics(run_dir / "metrics.jsonl") if r.kind == kind}


COMMON = {"kind", "step", "tokens", "time", "elapsed_s"}


@pytest.mark.slow
def test_overfits_a_fixed_batch_and_writes_a_complete_run(tmp_path):
    cfg = _config(tmp_path, **{"train.max_steps": 10, "data.max_train_samples": 4, "eval.val_every": 5,
                               "eval.audition_every": 10, "run.checkpoint_every": 5, "optim.lr": 5e-3})
    seen = []
    result = run_training(cfg, on_metrics=seen.append)
    assert result.status == "finished" and result.exit_code == 0 and result.step == 10
    run = result.run_dir
    losses = _losses(run)
    assert losses[10] < 0.6 * losses[1], losses  # the same 4 windows every step: the loss must fall

    records = read_metrics(run / "metrics.jsonl")
    assert records == seen  # the callback sees exactly the typed records the file gives back
    by_kind = {}
    for r in records:
        assert COMMON <= r.to_json().keys() and r.time > 0
        # every field the trainer writes is one its record type declares: no reader guesses a name
        assert r.extra == {}, (r.kind, r.extra)
        by_kind.setdefault(type(r), []).append(r)
    assert set(by_kind) == {StatusRecord, TrainRecord, ValRecord, AuditionRecord, CheckpointRecord}
    for r in by_kind[TrainRecord]:
        assert r.loss > 0 and r.lr > 0 and r.grad_norm > 0 and r.tokens_per_s > 0 and r.mem_alloc is None  # a CPU run
    steps = [r.step for r in by_kind[TrainRecord]]
    assert steps == sorted(steps) and all(b > a for a, b in zip([0] + steps, steps))
    val = by_kind[ValRecord]
    assert [v.step for v in val] == [5, 10]
    assert all(v.val_loss > 0 and v.bits_per_note > 0 and v.val_notes > 0 for v in val)
    # bits per note is the validation targets' total bits over the notes among them
    assert val[0].bits_per_note == pytest.approx(val[0].val_loss * val[0].val_tokens / math.log(2) / val[0].val_notes)
    assert [s.state for s in by_kind[StatusRecord]] == ["started", "finished"]
    started = by_kind[StatusRecord][0]
    assert started.max_steps == 10 and started.parameters > 0 and started.device == "cpu" and started.train_samples == 4

    # the resolved config, the environment, checkpoints and the audition are all there
    assert load_config(run / "config.toml").train.max_steps == 10
    env = json.loads((run / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-00000005", "step-00000010"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000010"
    model, sidecar = load_checkpoint(run / "checkpoints" / "step-00000010")
    assert sidecar["tokenizer"]["format"].startswith("pianomuse-tokenizer") and model.config.n_layer == 1
    audition = by_kind[AuditionRecord][0]
    assert audition.path.endswith("auditions/step-00000010.mid")
    score = symusic.Score(audition.path)  # a real MIDI file that decodes
    assert sum(len(t.notes) for t in score.tracks) == audition.notes > 0
    # the audition carries the evaluation's musical metrics against the run's training pieces
    assert audition.metrics_error is None, audition.metrics_error
    assert audition.copied_notes >= 0 and 0.0 <= audition.pitch_class_oa <= 1.0 and len(audition.scores) > 5


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
    settings = {"train.max_steps": 4, "data.augment": "true"}
    straight = run_training(_config(tmp_path / "a", **settings))
    event = threading.Event()
    first = run_training(_config(tmp_path / "b", **settings), stop_event=event,
                         on_metrics=lambda r: event.set() if r.kind == "train" and r.step == 1 else None)
    assert first.status == "stopped" and first.step == 2
    resumed = run_training(load_config(first.run_dir / "config.toml").with_overrides([f"run.resume={first.run_dir}"]))
    assert resumed.run_dir == first.run_dir and resumed.step == 4
    a, b = _losses(straight.run_dir), _losses(first.run_dir)
    assert [b[s] for s in (3, 4)] == [a[s] for s in (3, 4)]  # bit-for-bit on CPU
    states = [r.state for r in read_metrics(first.run_dir / "metrics.jsonl") if r.kind == "status"]
    assert states == ["started", "stopped", "resumed", "finished"]


@pytest.mark.slow
def test_nan_guard_skips_a_bad_step_and_aborts_after_k(tmp_path):
    # update attempts: 0 good (step 1), 1 poisoned (skipped), 2 good (step 2, checkpoint), 3-5 poisoned -> abort
    result = run_training(_config(tmp_path, **{"debug.nan_at_steps": "1,3,4,5,6", "run.max_bad_steps": 3,
                                              "run.checkpoint_every": 1, "train.max_steps": 9}))
    assert result.status == "aborted" and result.exit_code == 3 and result.step == 2 and result.bad_steps == 4
    assert "3 consecutive steps" in result.message and "step-00000002" in result.message
    records = read_metrics(result.run_dir / "metrics.jsonl")
    bad = [r for r in records if r.kind == "status" and r.state == "bad_step"]
    assert [(r.step, r.consecutive) for r in bad] == [(1, 1), (2, 1), (2, 2), (2, 3)]
    assert bad[0].loss is None  # JSON null, not NaN
    assert [r.step for r in records if r.kind == "train"] == [1, 2]  # the run went on after one bad step
    assert records[-1].state == "aborted"
    assert ckpt.latest_checkpoint(result.run_dir).name == "step-00000002"
    model, _ = load_checkpoint(ckpt.latest_checkpoint(result.run_dir))
    assert all(torch.isfinite(p).all() for p in model.parameters())  # no poisoned update was applied


def test_control_file_and_stop_event_save_and_stop(tmp_path):
    def stop_by_file(record):
        if record.kind == "train" and record.step == 1:
            run_dir = next((tmp_path / "file" / "runs").iterdir())
            (run_dir / "control" / "stop").touch()

    by_file = run_training(_config(tmp_path / "file", **{"train.max_steps": 50}), on_metrics=stop_by_file)
    assert by_file.status == "stopped" and by_file.exit_code == 130 and by_file.step == 2
    assert by_file.checkpoint.name == "step-00000002" and ckpt.is_complete(by_file.checkpoint)
    assert not (by_file.run_dir / "control" / "stop").exists()  # honoured, so it will not stop a resume

    event = threading.Event()
    by_event = run_training(_config(tmp_path / "event", **{"train.max_steps": 50}),
                            on_metrics=lambda r: event.set() if r.kind == "train" else None, stop_event=event)
    assert by_event.status == "stopped" and by_event.step == 2  # the step after the request finishes
    assert ckpt.latest_checkpoint(by_event.run_dir).name == "step-00000002"


def test_truncated_bptt_with_activation_checkpointing_and_l2wrap(tmp_path):
    result = run_training(_config(tmp_path, **{"train.tbptt_len": 32, "train.activation_checkpointing": "true",
                                               "train.l2wrap": "true", "train.max_steps": 2, "data.ctx_len": 80}))
    losses = _losses(result.run_dir)
    assert result.status == "finished" and all(math.isfinite(v) for v in losses.values())


def test_init_from_a_foreign_checkpoint_resizes_the_vocabulary(tmp_path):
    from engine.model import RWKV7, ModelConfig, save_checkpoint

    text_model = RWKV7(ModelConfig(n_layer=1, n_embd=64, vocab_size=1000, head_size=32))  # stands in for a text RWKV-7
    source = save_checkpoint(text_model, tmp_path / "text")
    cfg = _config(tmp_path, **{"train.max_steps": 1, "init_from": str(source), "optim.finetune_lr": 2e-5})
    result = run_training(cfg)
    started = next(r for r in read_metrics(result.run_dir / "metrics.jsonl") if r.kind == "status" and r.state == "started")
    model, sidecar = load_checkpoint(result.checkpoint)
    assert model.config.vocab_size == started.vocab_size != 1000  # the music tokenizer's vocabulary
    assert sidecar["tokenizer"] is not None and started.lr == 2e-5 and started.init_from == str(source)
    # the body came from the source checkpoint (one tiny fine-tuning step moves it only slightly)
    delta = (model.blocks[0].att.key.weight - text_model.blocks[0].att.key.weight).abs().max()
    assert delta < 1e-3


def test_packed_lm_objective_trains_and_validates(tmp_path):
    result = run_training(_config(tmp_path, **{"data.objective": "lm", "data.ctx_len": 64, "train.max_steps": 2,
                                               "eval.val_every": 2, "data.augment": "true"}))
    records = read_metrics(result.run_dir / "metrics.jsonl")
    train = [r for r in records if r.kind == "train"]
    val = [r for r in records if r.kind == "val"]
    assert result.status == "finished" and len(train) == 2 and len(val) == 1
    # packed chunks carry no padding: every input token counts, 4 chunks of 64 per step
    assert train[-1].tokens == 2 * 4 * 64
    assert val[0].val_loss > 0 and val[0].val_tokens > 0


@pytest.mark.slow
def test_compiled_blocks_train_the_same_losses(tmp_path):
    """train.compile=true (torch.compile of the block parts; inductor's CPU backend here) gives
    the losses of the eager run, step for step, on packed LM chunks."""
    settings = {"data.objective": "lm", "data.ctx_len": 64, "train.max_steps": 3}
    eager = run_training(_config(tmp_path / "eager", **settings))
    compiled = run_training(_config(tmp_path / "compiled", **settings, **{"train.compile": "true"}))
    assert compiled.status == "finished"
    a, b = _losses(eager.run_dir), _losses(compiled.run_dir)
    assert a.keys() == b.keys() == {1, 2, 3}
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5), step


def test_wkv_recompute_trains_the_same_losses(tmp_path):
    settings = {"train.max_steps": 2}
    plain = run_training(_config(tmp_path / "plain", **settings))
    recompute = run_training(_config(tmp_path / "recompute", **settings, **{"train.wkv_recompute": "true"}))
    a, b = _losses(plain.run_dir), _losses(recompute.run_dir)
    assert a.keys() == b.keys() == {1, 2}
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-6), step


def test_fused_head_trains_the_same_losses_and_validation(tmp_path):
    """train.fused_head=true (the chunked head + loss that CUDA uses by default) gives the plain
    path's training losses step for step and the same validation loss, with L2Wrap on."""
    settings = {"train.max_steps": 3, "eval.val_every": 3, "train.l2wrap": "true"}
    plain = run_training(_config(tmp_path / "plain", **settings))
    fused = run_training(_config(tmp_path / "fused", **settings, **{"train.fused_head": "true"}))
    assert fused.status == plain.status == "finished"
    a, b = _losses(plain.run_dir), _losses(fused.run_dir)
    assert a.keys() == b.keys() == {1, 2, 3}
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5), step
    val = lambda run: [r.val_loss for r in read_metrics(run.run_dir / "metrics.jsonl") if r.kind == "val"]  # noqa: E731
    assert val(fused) == pytest.approx(val(plain), rel=1e-5) and len(val(plain)) == 1


def test_the_loop_fits_on_a_screen_and_its_parts_have_names():
    """Trainer._fit reads as set-up, restore, step, schedule, finish; each part is a method of its own."""
    import inspect

    from engine.train.trainer import LoopState, Trainer

    assert len(inspect.getsource(Trainer._fit).splitlines()) <= 30
    for part in ("_set_up", "_build_model", "_restore", "_step", "_on_schedule", "_validate", "_audition", "_save", "_finish"):
        assert callable(getattr(Trainer, part)), part
    assert {"step", "tokens", "cursor", "attempts", "bad_steps_total", "last_checkpoint"} <= set(LoopState.__dataclass_fields__)

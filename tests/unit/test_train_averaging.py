"""Weight averaging (train.ema_decay) in real trainer runs on a micro model and real corpus files:
the average is the closed-form bias-corrected mean of the weights after each applied step, its
validation scores the averaged weights without touching the trained ones, a resume continues it
bit for bit, and the best weights of a run (raw or averaged) export, load and generate."""
from __future__ import annotations

import math
import threading

import mido
import pytest
import torch
from typer.testing import CliRunner

from engine import rundir
from engine.metric_records import ValRecord
from engine.model import load_checkpoint, save_checkpoint
from engine.rundir import read_metrics
from engine.train.averaging import WeightAverage, averaged_model_state
from engine.train.config import load_config
from engine.train.distributed import DistInfo
from engine.train.export import BestWeights, best_validated_weights, load_best_weights
from engine.train.feed import open_feed
from engine.train.metrics import MetricsLog
from engine.train.objective import TrainingObjective
from engine.train.trainer import run_training
from pianomuse_tui.cli import app
from train_helpers import micro_overrides, small_store


def _config(tmp_path, **extra):
    return load_config(preset="tiny", overrides=micro_overrides(small_store(), tmp_path / "runs", **extra))


def _raw_weights(ckpt) -> dict[str, torch.Tensor]:
    model, _ = load_checkpoint(ckpt / rundir.WEIGHTS)
    return model.state_dict()


def _average(ckpt) -> dict:
    return rundir.load_trainer_state(ckpt)["ema"]


def _vals(run_dir) -> list[ValRecord]:
    return [r for r in read_metrics(run_dir / rundir.METRICS) if isinstance(r, ValRecord)]


@pytest.mark.slow
def test_the_average_is_the_bias_corrected_mean_of_the_weights_after_each_applied_step(tmp_path):
    # two micro-batches per step (accumulation) and one skipped step (attempt 2 is poisoned): the
    # average must move once per applied optimizer step, never per micro-batch or skipped step
    d = 0.7
    result = run_training(_config(tmp_path, **{"train.ema_decay": d, "train.max_steps": 5, "train.batch_size": 4,
                                               "train.micro_batch_size": 2, "debug.nan_at_steps": "2",
                                               "run.checkpoint_every": 1, "run.keep_checkpoints": 10}))
    assert result.status == "finished" and result.step == 5 and result.bad_steps == 1
    ckpts = rundir.list_checkpoints(result.run_dir)
    assert [rundir.checkpoint_step(c) for c in ckpts] == [1, 2, 3, 4, 5]
    raw = [_raw_weights(c) for c in ckpts]  # w_1 .. w_5, recorded by the run itself
    for t, ckpt in enumerate(ckpts, start=1):
        saved = _average(ckpt)
        assert saved["decay"] == d and saved["updates"] == t
        norm = (1 - d**t) / (1 - d)
        for name, average in saved["weights"].items():
            expected = sum(d ** (t - i) * raw[i - 1][name].double() for i in range(1, t + 1)) / norm
            torch.testing.assert_close(average.double(), expected, rtol=1e-5, atol=1e-6, msg=f"{name} at step {t}")
    moved = [n for n, w in _average(ckpts[-1])["weights"].items() if not torch.equal(w, raw[-1][n])]
    assert moved, "after 5 steps the average must differ from the last weights"
    # only the trained tensors are averaged (layer 0's unused value-residual tensors are frozen)
    assert set(_average(ckpts[-1])["weights"]) < set(raw[-1])


@pytest.mark.slow
def test_validating_the_average_scores_it_and_leaves_training_untouched(tmp_path):
    settings = {"train.max_steps": 4, "eval.val_every": 2, "run.checkpoint_every": 2, "data.augment": "true"}
    plain = run_training(_config(tmp_path / "plain", **settings))
    averaged = run_training(_config(tmp_path / "ema", **settings, **{"train.ema_decay": 0.8}))
    losses = lambda run: [(r.step, r.loss) for r in read_metrics(run.run_dir / rundir.METRICS) if r.kind == "train"]  # noqa: E731
    assert losses(averaged) == losses(plain)  # swapping the average in and out for validation is exact
    last_plain, last_ema = rundir.latest_checkpoint(plain.run_dir), rundir.latest_checkpoint(averaged.run_dir)
    for name, w in _raw_weights(last_plain).items():
        assert torch.equal(_raw_weights(last_ema)[name], w), name

    plain_vals, ema_vals = _vals(plain.run_dir), _vals(averaged.run_dir)
    assert [v.step for v in ema_vals] == [2, 4]
    assert all(v.ema_val_loss is None and v.ema_bits_per_note is None for v in plain_vals)
    assert [v.val_loss for v in ema_vals] == [v.val_loss for v in plain_vals]
    assert averaged.last_val["ema_val_loss"] == ema_vals[-1].ema_val_loss

    # recomputed here: the record's ema_val_loss is the loss of the averaged weights, val_loss of the raw ones
    cfg = load_config(averaged.run_dir / rundir.CONFIG)
    feed = open_feed(cfg, DistInfo())
    model, _ = load_checkpoint(last_ema / rundir.WEIGHTS)
    raw_state = {name: w.clone() for name, w in model.state_dict().items()}  # (state_dict shares storage)

    def loss_of(state):
        model.load_state_dict(state)
        model.eval()
        objective, nats, targets = TrainingObjective(model), 0.0, 0
        with torch.no_grad():
            for chunk in feed.val_chunks(cfg.train.micro_batch_size, cfg.eval.val_max_batches, DistInfo()):
                loss_sum, _ = objective(*chunk.to(torch.device("cpu")))
                nats, targets = nats + loss_sum.double().item(), targets + chunk.n_targets
        return nats / targets

    try:
        last = ema_vals[-1]
        assert loss_of(averaged_model_state(raw_state, _average(last_ema))) == pytest.approx(last.ema_val_loss, rel=1e-6)
        assert loss_of(raw_state) == pytest.approx(last.val_loss, rel=1e-6)
        assert not math.isclose(last.ema_val_loss, last.val_loss, rel_tol=1e-6)
    finally:
        feed.close()


@pytest.mark.slow
def test_a_resumed_run_continues_the_average_bit_for_bit(tmp_path):
    settings = {"train.max_steps": 4, "data.augment": "true", "train.ema_decay": 0.9, "eval.val_every": 4}
    straight = run_training(_config(tmp_path / "a", **settings))
    event = threading.Event()
    first = run_training(_config(tmp_path / "b", **settings), stop_event=event,
                         on_metrics=lambda r: event.set() if r.kind == "train" and r.step == 1 else None)
    assert first.status == "stopped" and first.step == 2
    stopped_at = rundir.latest_checkpoint(first.run_dir)
    assert _average(stopped_at)["updates"] == 2
    resumed = run_training(load_config(first.run_dir / rundir.CONFIG).with_overrides([f"run.resume={first.run_dir}"]))
    assert resumed.step == 4
    a, b = _average(rundir.latest_checkpoint(straight.run_dir)), _average(rundir.latest_checkpoint(resumed.run_dir))
    assert a["updates"] == b["updates"] == 4
    for name, w in a["weights"].items():
        assert torch.equal(b["weights"][name], w), name
    assert _vals(resumed.run_dir)[-1].ema_val_loss == _vals(straight.run_dir)[-1].ema_val_loss
    notes = [r.message for r in read_metrics(resumed.run_dir / rundir.METRICS) if r.kind == "status" and r.state == "note"]
    assert notes == []  # a plain continuation says nothing

    # a different decay on resume cannot continue the old average: it starts again, and says so
    again = run_training(load_config(first.run_dir / rundir.CONFIG).with_overrides(
        [f"run.resume={first.run_dir}", "train.max_steps=5", "train.ema_decay=0.5"]))
    assert again.step == 5
    saved = _average(rundir.latest_checkpoint(again.run_dir))
    assert saved["decay"] == 0.5 and saved["updates"] == 1
    notes = [r.message for r in read_metrics(again.run_dir / rundir.METRICS) if r.kind == "status" and r.state == "note"]
    assert notes == ["train.ema_decay changed from 0.9 to 0.5, so the weight average starts again from the weights after step 5"]


@pytest.mark.slow
def test_the_best_weights_of_a_run_export_load_and_generate(tmp_path):
    result = run_training(_config(tmp_path, **{"train.max_steps": 4, "train.ema_decay": 0.5, "eval.val_every": 2,
                                               "run.checkpoint_every": 2}))
    vals = _vals(result.run_dir)
    best = best_validated_weights(result.run_dir)
    lowest = min(vals, key=lambda v: min(v.val_loss, v.ema_val_loss))
    assert best.step == lowest.step and best.val_loss == min(lowest.val_loss, lowest.ema_val_loss)
    assert best.weights == ("ema" if lowest.ema_val_loss < lowest.val_loss else "raw")

    ckpt = rundir.latest_checkpoint(result.run_dir)
    for weights in ("ema", "raw"):  # whichever won, both kinds export
        chosen = BestWeights(ckpt, 4, weights, vals[-1])
        model, sidecar = load_best_weights(chosen)
        expected = _average(ckpt)["weights"] if weights == "ema" else _raw_weights(ckpt)
        for name, w in expected.items():
            assert torch.equal(model.state_dict()[name], w), (weights, name)
        assert ("moving average" if weights == "ema" else "trained weights") in chosen.describe()
        out = save_checkpoint(model.to(torch.bfloat16), tmp_path / "export" / f"{weights}.pth",
                              tokenizer=sidecar["tokenizer"], extra={"weights": weights})
        take = tmp_path / f"{weights}.mid"
        threads = torch.get_num_threads()  # the command sets its own; the other tests keep theirs
        try:
            ran = CliRunner().invoke(app, ["--headless", "generate", "--checkpoint", str(out), "--bars", "2", "--seed", "3",
                                           "--threads", "1", "--out", str(take)])
        finally:
            torch.set_num_threads(threads)
        assert ran.exit_code == 0, ran.output
        assert any(m.type == "note_on" for m in mido.MidiFile(take))


def test_the_best_weights_skip_stale_records_and_take_the_better_of_raw_and_average(tmp_path):
    """A run's records: the resumed run trained steps 3-4 again, so the first step-4 record is stale."""
    run = tmp_path / "run"
    for step in (2, 4):
        folder = run / rundir.CHECKPOINTS / rundir.checkpoint_name(step)
        folder.mkdir(parents=True)
        for name in (rundir.WEIGHTS, rundir.SIDECAR, rundir.TRAINER_STATE):
            (folder / name).write_bytes(b"")
    from engine.metric_records import StatusRecord

    log = MetricsLog(run / rundir.METRICS)
    log.write(StatusRecord(step=0, state="started"))
    log.write(ValRecord(step=2, val_loss=1.0, ema_val_loss=0.9))
    log.write(ValRecord(step=4, val_loss=0.5, ema_val_loss=0.6))  # stale: trained again after the resume
    log.write(StatusRecord(step=2, state="resumed"))
    log.write(ValRecord(step=4, val_loss=0.95, ema_val_loss=0.97))
    log.close()
    best = best_validated_weights(run)
    assert (best.step, best.weights, best.val_loss) == (2, "ema", 0.9)
    assert best.describe() == ("the moving average of the weights at step 2, validation loss 0.9000 nats/token; "
                               "the raw weights 1.0000")
    assert ValRecord(step=1, val_loss=0.8).best_weights == "raw"


def test_swapping_the_average_in_and_out_is_exact():
    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, 0.5)
    raw = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update()  # the first update copies the weights
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update()  # (w1 * 0.5 + w2) / 1.5
    with average.swapped_in():
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), raw[n] + 1.0 + 1.0 / 1.5)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), raw[n] + 2.0)


@pytest.mark.slow
def test_turning_averaging_on_when_resuming_starts_the_average_and_says_so(tmp_path):
    first = run_training(_config(tmp_path, **{"train.max_steps": 2, "run.checkpoint_every": 2}))
    assert rundir.load_trainer_state(rundir.latest_checkpoint(first.run_dir))["ema"] is None
    resumed = run_training(load_config(first.run_dir / rundir.CONFIG).with_overrides(
        [f"run.resume={first.run_dir}", "train.max_steps=4", "train.ema_decay=0.9"]))
    assert resumed.step == 4
    saved = _average(rundir.latest_checkpoint(resumed.run_dir))
    assert saved["decay"] == 0.9 and saved["updates"] == 2  # steps 3 and 4
    raw = _raw_weights(rundir.latest_checkpoint(resumed.run_dir))
    assert any(not torch.equal(w, raw[name]) for name, w in saved["weights"].items())
    notes = [r.message for r in read_metrics(resumed.run_dir / rundir.METRICS) if r.kind == "status" and r.state == "note"]
    assert notes == ["the checkpoint has no weight average (it was trained with train.ema_decay=0), so the average "
                     "starts from the weights after step 3"]

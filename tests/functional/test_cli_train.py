"""`pianomuse-tui --headless train` end to end: a real run from the console script, bad input
(one sentence, exit 2, nothing created), SIGINT (saves, exit 130) and a kill during a save."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from train_helpers import micro_overrides, small_store

from engine.model import load_checkpoint
from engine import rundir as ckpt
from engine.rundir import read_metrics
from engine.train.trainer import run_training
from engine.train.config import load_config
from pianomuse_tui.cli import app

CLI = [str(Path(sys.executable).with_name("pianomuse-tui")), "--headless", "train"]


def _micro_args(run_root: Path, **extra) -> list[str]:
    """micro_overrides as --section.key VALUE words, minus what the named flags cover."""
    words = []
    for item in micro_overrides(small_store(), run_root, **extra):
        key, value = item.split("=", 1)
        if key not in ("data.path", "run.root", "train.max_steps", "train.device"):
            words += [f"--{key}", value]
    return words


@pytest.mark.slow
def test_headless_train_end_to_end(tmp_path):
    out = subprocess.run(
        CLI + ["--preset", "tiny", "--max-steps", "3", "--run-dir", str(tmp_path / "tmp"), "--data", str(small_store()),
               "--device", "cpu", "--eval.val_every", "3", "--eval.val_max_batches", "1", "--run.log_every", "1",
               "--eval.audition_every", "0", "--train.batch_size", "4", "--train.micro_batch_size", "4",
               "--train.ema_decay", "0.9"],
        capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stderr
    (run,) = (tmp_path / "tmp").iterdir()
    assert run.name.endswith("-tiny")
    lines = out.stdout.splitlines()  # not a terminal: plain lines, one per event
    assert any(line.startswith("step 3/3 loss ") for line in lines), out.stdout
    assert any("val_loss" in line and "bits/note" in line and "ema_val_loss" in line for line in lines), out.stdout
    assert lines[-1].startswith("done: 3 steps")
    assert load_config(run / "config.toml").model.n_layer == 2  # the tiny preset, resolved
    model, _ = load_checkpoint(ckpt.latest_checkpoint(run))
    assert model.config.n_embd == 128


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="what a machine without a GPU does")
@pytest.mark.slow
def test_without_a_gpu_the_default_is_the_tiny_preset_and_it_says_so(tmp_path):
    import json

    root = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run(CLI + ["--run-dir", str(root), "--data", str(small_store()), "--max-steps", "1",
                                "--eval.val_every", "0", "--eval.audition_every", "0", "--run.checkpoint_every", "0",
                                "--train.batch_size", "2", "--train.micro_batch_size", "2", "--data.ctx_len", "64"],
                         capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith("no GPU found: using the tiny preset"), out.stdout
    (run,) = root.iterdir()
    assert load_config(run / "config.toml").preset == "tiny"
    threads = json.loads((run / "env.json").read_text())["cpu_threads"]
    assert threads >= 1  # one on a busy machine, torch's default otherwise (the rule: the unit test below)


@pytest.mark.slow
def test_resuming_with_a_new_max_steps_says_the_schedule_is_re_stretched(tmp_path):
    root = tmp_path / "runs"
    common = ["--run-dir", str(root), "--data", str(small_store()), "--device", "cpu", *_micro_args(root)]
    first = subprocess.run(CLI + common + ["--max-steps", "2"], capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stderr
    same = subprocess.run(CLI + common + ["--resume", "auto", "--max-steps", "2"], capture_output=True, text=True,
                          timeout=240)
    assert same.returncode == 0 and "re-stretched" not in same.stdout  # the same length: nothing to say
    longer = subprocess.run(CLI + common + ["--resume", "auto", "--max-steps", "3"], capture_output=True, text=True,
                            timeout=240)
    assert longer.returncode == 0, longer.stderr
    note = longer.stdout.splitlines()[0]
    assert note.startswith("resuming with max_steps 3 (the run had 2): the learning-rate cosine is re-stretched")
    assert "resume without --max-steps to keep the original schedule" in note


def test_cpu_runs_of_narrow_models_use_one_thread_on_a_busy_machine_unless_the_user_says(monkeypatch):
    from engine.train.launch import cpu_train_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    tiny, small, base = (load_config(None, p).with_overrides(["train.device=cpu"]) for p in ("tiny", "small", "base"))
    busy, idle = {"load": 10.0, "cores": 2}, {"load": 2.3, "cores": 2}  # the two loads bench/train_cpu.py met
    assert cpu_train_threads(tiny, **busy) == 1 and cpu_train_threads(small, **busy) == 1
    assert cpu_train_threads(tiny, **idle) is None  # two threads were faster there
    assert cpu_train_threads(base, **busy) is None  # wide enough to split
    assert cpu_train_threads(tiny.with_overrides(["train.device=cuda"]), **busy) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cpu_train_threads(tiny, **busy) is None  # the user's choice stands


def test_the_default_preset_follows_the_device(monkeypatch):
    import torch

    from engine.train.launch import default_preset, resolve_config

    assert default_preset("cuda").name == "small" and default_preset("cuda").note == ""
    assert default_preset("cpu").name == "tiny" and "training on the CPU" in default_preset("cpu").note
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU cannot exist here: only its answer
    assert default_preset().name == "small"
    assert resolve_config(None, None, [], device="auto").preset == "small"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_preset().name == "tiny" and default_preset().note.startswith("no GPU found")
    assert resolve_config(None, None, [], device="auto").preset == "tiny"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--optim.lr", "-1e-3"], "optim.lr must be greater than 0"),
        (["--optim.bogus", "1"], "unknown config key 'optim.bogus'"),
        (["--data", "/no/such/folder"], "data folder /no/such/folder does not exist"),
        (["--resume", "/no/such/run"], "is neither a run directory nor a checkpoint folder"),
        (["--device", "cuda:0"] if not __import__("torch").cuda.is_available() else ["--max-steps", "0"], "CUDA" if not __import__("torch").cuda.is_available() else "--max-steps"),
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["stray"], "unexpected argument 'stray'"),
    ],
)
def test_bad_input_is_one_sentence_and_creates_nothing(tmp_path, args, fragment):
    result = CliRunner().invoke(app, ["--headless", "train", "--run-dir", str(tmp_path / "runs"), "--preset", "tiny", *args])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error:") and fragment in message and message.count("\n") == 0, message
    assert not (tmp_path / "runs").exists()


def _wait_for(predicate, proc, timeout=180.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("timed out waiting for the trainer")


def _train_records(run_root: Path) -> list[dict]:
    runs = list(run_root.glob("*/metrics.jsonl"))
    return [r for r in read_metrics(runs[0]) if r.kind == "train"] if runs else []


@pytest.mark.slow
def test_sigint_saves_and_exits_130(tmp_path):
    root = tmp_path / "runs"
    proc = subprocess.Popen(CLI + ["--run-dir", str(root), "--data", str(small_store()), "--max-steps", "100000",
                                   "--device", "cpu", *_micro_args(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: len(_train_records(root)) >= 1, proc)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130
    (run,) = root.iterdir()
    last = ckpt.latest_checkpoint(run)
    step = max(r.step for r in _train_records(root))
    assert last.name == ckpt.checkpoint_name(step) and ckpt.is_complete(last)
    assert "resume with: pianomuse-tui --headless train --run-dir" in stdout
    states = [r.state for r in read_metrics(run / "metrics.jsonl") if r.kind == "status"]
    assert states == ["started", "stopped"]


@pytest.mark.slow
def test_second_sigint_stops_at_once_without_saving(tmp_path):
    """The first Ctrl-C is answered at once, while the step (here: its save) is still running."""
    import threading

    root = tmp_path / "runs"
    proc = subprocess.Popen(CLI + ["--run-dir", str(root), "--data", str(small_store()), "--max-steps", "100000",
                                   "--device", "cpu", *_micro_args(root), "--debug.save_pause_s", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    _wait_for(lambda: len(_train_records(root)) >= 1, proc)
    proc.send_signal(signal.SIGINT)  # first: finish the step, then save (which the pause holds open)
    _wait_for(lambda: any("stopping after this step" in line for line in stderr_lines), proc)
    notice = " ".join(" ".join(stderr_lines).split())
    assert "Ctrl-C again aborts without saving" in notice
    _wait_for(lambda: any(root.glob("*/checkpoints/.tmp-step-*")), proc)
    proc.send_signal(signal.SIGINT)  # second: stop now
    proc.wait(timeout=60)
    reader.join(timeout=10)
    stderr = "".join(stderr_lines)
    assert proc.returncode == 130
    (run,) = root.iterdir()
    assert ckpt.latest_checkpoint(run) is None and not list((run / "checkpoints").glob(".tmp-*"))
    last = read_metrics(run / "metrics.jsonl")[-1]
    assert last.state == "interrupted" and "without saving" in last.message
    assert "aborting now without saving" in stderr and "interrupted:" in stderr


@pytest.mark.slow
def test_kill_during_save_keeps_the_previous_checkpoint(tmp_path):
    root = tmp_path / "runs"
    proc = subprocess.Popen(CLI + ["--run-dir", str(root), "--data", str(small_store()), "--max-steps", "100000",
                                   "--device", "cpu", *_micro_args(root), "--run.checkpoint_every", "1",
                                   "--debug.save_pause_s", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def saving_second():
        return any(root.glob("*/checkpoints/step-00000001")) and any(root.glob("*/checkpoints/.tmp-step-00000002-*"))

    _wait_for(saving_second, proc)
    os.kill(proc.pid, signal.SIGKILL)  # mid-save: files written, not yet published
    proc.wait(timeout=30)
    (run,) = root.iterdir()
    last = ckpt.latest_checkpoint(run)
    assert last.name == "step-00000001" and ckpt.is_complete(last)
    load_checkpoint(last)  # intact
    resumed = run_training(load_config(run / "config.toml").with_overrides(
        [f"run.resume={run}", "train.max_steps=2", "debug.save_pause_s=0"]))
    assert resumed.status == "finished" and resumed.step == 2
    assert not list((run / "checkpoints").glob(".tmp-*"))  # the dead save's leftovers are gone


@pytest.mark.slow
def test_closing_the_terminal_saves_like_ctrl_c(tmp_path):
    """Issue 18 item 7: SIGHUP (the terminal closed) used to kill the run without saving."""
    import pty
    import threading

    root = tmp_path / "runs"
    pid, terminal = pty.fork()  # the child's controlling terminal is this pseudo-terminal
    if pid == 0:
        os.execv(CLI[0], CLI + ["--run-dir", str(root), "--data", str(small_store()), "--max-steps", "100000",
                                "--device", "cpu", *_micro_args(root)])
    shown = bytearray()

    def read_terminal():  # the terminal's output must be drained, as a real one would
        while True:
            try:
                chunk = os.read(terminal, 4096)
            except OSError:
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    deadline = time.monotonic() + 180
    while len(_train_records(root)) < 1:
        assert time.monotonic() < deadline, bytes(shown[-2000:]).decode(errors="replace")
        time.sleep(0.1)
    os.close(terminal)  # hang up: the kernel sends SIGHUP to the run
    deadline = time.monotonic() + 120
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        assert time.monotonic() < deadline, "the trainer did not stop after SIGHUP"
        time.sleep(0.1)
    assert os.waitstatus_to_exitcode(done[1]) == 130
    (run,) = root.iterdir()
    last = ckpt.latest_checkpoint(run)
    step = max(r.step for r in _train_records(root))
    assert last is not None and last.name == ckpt.checkpoint_name(step) and ckpt.checkpoint_problem(last) is None
    stopped = [r for r in read_metrics(run) if r.kind == "status" and r.state == "stopped"]
    assert len(stopped) == 1 and "SIGHUP" in stopped[0].message

"""A training run in its own process, started and stopped from the app.

CUDA does not survive fork, so the child is spawned (a fresh interpreter). The app and the child
share nothing but the run directory: the child's trainer writes ``metrics.jsonl``, checkpoints and
auditions there; the app asks it to stop by creating ``control/stop`` (the trainer saves and exits
at the next step boundary). A pipe carries just one thing back: the one-sentence error when the
run could not start or crashed.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
import weakref
from pathlib import Path

from engine.rundir import RunError, find_resume_point, request_stop, run_held_by
from engine.train.request import TrainRequest

_LIVE: "weakref.WeakSet[TrainingProcess]" = weakref.WeakSet()


def runs_root(request: TrainRequest) -> Path:
    return Path(request.run_root or "runs")


def launch_problem(spec: TrainRequest) -> str | None:
    """The one sentence saying why ``spec`` cannot start (a missing file or run), or None.

    It touches the disk, so the Train pane calls it from a worker thread.
    """
    if spec.config and not Path(spec.config).is_file():
        return f"Config file {spec.config} does not exist; type the path of a TOML file or clear it."
    if spec.data and not Path(spec.data).exists():
        return f"Data {spec.data} does not exist; type a MIDI folder or token store, or clear it."
    if spec.resume:
        try:
            find_resume_point(spec.resume, runs_root(spec))
        except RunError as exc:
            return f"Cannot resume: {exc}."
    return None


def _redirect_output(log_path: str) -> None:
    """The child shares the app's terminal: everything it prints goes to the run's log instead."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)


def _child_main(spec: TrainRequest, log_path: str, conn) -> None:
    _redirect_output(log_path)
    # the terminal's Ctrl+C belongs to the app; the child stops through control/stop (or SIGINT sent to it)
    try:
        from engine.train.launch import apply_cpu_train_threads
        from engine.train.trainer import run_training

        config = spec.resolve()
        apply_cpu_train_threads(config)
        result = run_training(config, on_metrics=None, stop_event=None)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BaseException as exc:  # noqa: BLE001 - the sentence goes back to the app
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        try:
            conn.send(("error", text))
        finally:
            import traceback

            traceback.print_exc()
            raise SystemExit(1) from None
    if result.status == "aborted":
        conn.send(("error", result.message or "the run aborted; see its metrics.jsonl"))
    raise SystemExit(result.exit_code)


class TrainingProcess:
    """One spawned training run: start, find its run directory, stop it (saving), reap it."""

    def __init__(self, spec: TrainRequest) -> None:
        self.spec = spec
        self.runs_root = runs_root(spec).resolve()
        self.runs_root.mkdir(parents=True, exist_ok=True)
        self.log_path = self.runs_root / f".pianomuse-train-{os.getpid()}-{time.time_ns()}.log"
        self.run_dir: Path | None = None
        self.error: str | None = None
        ctx = multiprocessing.get_context("spawn")
        self._recv, send = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=_child_main, args=(spec, str(self.log_path), send),
                                   name="pianomuse-train", daemon=False)
        self._send = send

    def start(self) -> None:
        self.process.start()
        self._send.close()  # the child holds the only writer now: EOF means it is gone
        _LIVE.add(self)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    @property
    def exit_code(self) -> int | None:
        return self.process.exitcode

    def find_run_dir(self) -> Path | None:
        """The run directory this process writes: the resumed one, or the one created after start."""
        if self.run_dir is not None:
            return self.run_dir
        # the trainer records its process in the run it locks (new or resumed)
        self.run_dir = run_held_by(self.runs_root, self.process.pid)
        return self.run_dir

    def poll_error(self) -> str | None:
        try:
            while self._recv.poll():
                kind, text = self._recv.recv()
                if kind == "error":
                    self.error = text
        except (EOFError, OSError):
            pass
        return self.error

    def request_stop(self) -> None:
        """Save and exit at the next step boundary (control/stop; SIGINT before the run dir exists)."""
        run_dir = self.find_run_dir()
        if run_dir is not None:
            request_stop(run_dir)
        elif self.alive and self.pid:
            os.kill(self.pid, signal.SIGINT)

    def wait(self, timeout: float) -> bool:
        self.process.join(timeout)
        return not self.alive

    def kill(self) -> None:
        """Last resort (the run did not stop in time, or the app is going away)."""
        if self.alive:
            self.process.terminate()
            self.process.join(5)
        if self.alive:
            self.process.kill()
            self.process.join(5)

    def log_tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def kill_all_training() -> None:
    """Called when the app exits however it exits: no training child is left behind."""
    for proc in list(_LIVE):
        if proc.alive:
            proc.request_stop()
    deadline = time.monotonic() + 30
    for proc in list(_LIVE):
        proc.wait(max(0.1, deadline - time.monotonic()))
        proc.kill()

"""The training loop: a plain loop a reader can hold in their head (nanoGPT-style).

One optimizer step = the global batch (``train.batch_size`` sequences over all processes), split
into micro-batches per process (gradient accumulation) and, with ``train.tbptt_len``, into time
chunks whose recurrent state is carried forward and detached (truncated BPTT). The summed loss of
every piece is divided by the global batch's target count, so all of these give the gradient of
one mean, whatever the world size.

Precision: fp32 master weights; bf16 autocast on CUDA, fp32 on CPU. No GradScaler: bf16 has
fp32's exponent range, so gradients do not underflow and there is nothing to rescale.

Per step there is one host sync: the loss and gradient norm are read together after backward,
which is what the NaN/inf guard needs to decide whether to apply the update.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from engine import rundir
from engine.metric_records import AuditionRecord, CheckpointRecord, StatusRecord, TrainRecord, ValRecord
from engine.atomic import write_atomic
from engine.model import RWKV7, ModelConfig, load_checkpoint, save_checkpoint
from engine.paths import REPO_ROOT

from .audition import write_audition
from .averaging import WeightAverage
from .config import ConfigError, TrainConfig, compile_enabled, fused_head_enabled
from .distributed import (
    DistInfo, all_reduce_sum, barrier, broadcast_object, full_model_state, full_optimizer_state, full_tensor,
    init_distributed, load_optimizer_state, reshard, shard_fsdp, shutdown,
)
from .feed import open_feed
from .metrics import MetricsCallback, MetricsLog
from .objective import TrainingObjective, enable_activation_checkpointing
from .optim import build_optimizer, set_learning_rate
from .schedule import CosineTokenSchedule

EXIT_FINISHED, EXIT_ABORTED, EXIT_STOPPED = 0, 3, 130


class TrainingAborted(RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps); the message says what to do."""


@dataclass
class TrainResult:
    status: str  # "finished" | "stopped" (saved) | "interrupted" (second signal, not saved) | "aborted"
    run_dir: Path
    step: int
    tokens: int
    checkpoint: Path | None
    message: str = ""
    bad_steps: int = 0
    last_val: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return {"finished": EXIT_FINISHED, "stopped": EXIT_STOPPED, "interrupted": EXIT_STOPPED}.get(self.status, EXIT_ABORTED)


@dataclass
class LoopState:
    """Where a run stands: what a checkpoint stores and a resume restores, and the loop's counters."""

    step: int = 0  # optimizer steps applied
    tokens: int = 0  # training tokens of the applied steps
    cursor: int = 0  # samples of the stream consumed (skipped steps too)
    attempts: int = 0  # steps tried, applied or skipped
    bad_steps_total: int = 0
    consecutive_bad: int = 0
    last_checkpoint: Path | None = None
    last_val: dict = field(default_factory=dict)
    window_tokens: int = 0  # tokens since the last train line (its tokens/s)
    window_start: float = 0.0


def _text(path: Path | None) -> str | None:
    return str(path) if path is not None else None


class StopSignals:
    """SIGINT/SIGTERM/SIGHUP: the first asks for save-and-exit at the next step boundary; a second
    SIGINT or SIGTERM aborts at once (KeyboardInterrupt). SIGHUP is a closed terminal: output to
    it is dropped from then on (writing to a hung-up terminal fails, and must not cost the save),
    and it never counts as the second signal. Installed only in the main thread, restored on exit."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self):
        self.requested = False
        self.reason = ""
        self._old: dict[int, object] = {}
        # which of stdout/stderr are the terminal, asked now: after a hang-up the question fails
        self._terminal_fds = [fd for fd in (1, 2) if _isatty(fd)]

    def _handle(self, signum, frame):
        hangup = signum == getattr(signal, "SIGHUP", None)
        if hangup:
            _send_to_devnull(self._terminal_fds)
        if self.requested:
            if hangup:
                return
            raise KeyboardInterrupt
        self.requested = True
        self.reason = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _send_to_devnull(fds: list[int]) -> None:
    """Point ``fds`` (the hung-up terminal's) at /dev/null; files and pipes keep their output."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def resolve_device(spec: str, dist: DistInfo) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("train.device asks for CUDA but no CUDA GPU is visible here; use --device cpu or --device auto")
        if spec == "cuda":
            return torch.device("cuda", dist.local_rank)
    return torch.device(spec)


def resolve_precision(spec: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = plain fp32)."""
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if spec == "bf16":
        return torch.bfloat16
    return None


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment_report(device: torch.device, dist: DistInfo, backend: str) -> dict:
    import importlib.metadata as md

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "pianomuse": version("pianomuse"),
        "miditok": version("miditok"),
        "symusic": version("symusic"),
        "git_revision": _git_revision(),
        "device": str(device),
        "world_size": dist.world_size,
        "wkv_backend": backend,
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["compute_capability"] = list(torch.cuda.get_device_capability(device))
    return env


def _rng_state(device: torch.device) -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def freeze_unused_parameters(model: RWKV7, device: torch.device) -> list[str]:
    """Parameters no forward touches (layer 0's value-residual v0/v1/v2) get requires_grad=False,
    found by one tiny backward, so DDP need not search for unused parameters every step."""
    probe = torch.zeros(1, 2, dtype=torch.long, device=device)
    model.zero_grad(set_to_none=True)
    h, _ = model.hidden(probe, return_state=False)
    model.head(h).float().sum().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for n, p in model.named_parameters():
        if n in unused:
            p.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    return unused


class Trainer:
    def __init__(self, config: TrainConfig, on_metrics: MetricsCallback | None = None, stop_event: threading.Event | None = None):
        self.cfg = config.validate()
        self.on_metrics = on_metrics
        self.stop_event = stop_event
        self.fsdp = False  # set in _build_model: train.parallel=fsdp under torchrun

    # ------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg = self.cfg
        dist = init_distributed("cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu")
        self.dist = dist
        try:
            with StopSignals() as signals:
                self.signals = signals
                return self._fit(cfg, dist)
        finally:
            if getattr(self, "log", None) is not None:
                self.log.close()
            if getattr(self, "feed", None) is not None:
                self.feed.close()
            if getattr(self, "run_lock", None) is not None:
                self.run_lock.release()
            shutdown(dist)

    def _setup_run_dir(self, cfg: TrainConfig, dist: DistInfo) -> tuple[Path, Path | None]:
        """The run folder (locked by rank 0 for the whole fit) and the checkpoint to resume from.

        Nothing in a resumed run is written before its lock is held and an intact checkpoint is
        found; a run that cannot be resumed is a RunError, never a silently started new run.
        """
        resume_from = None
        run_dir = None
        self.notes: list[str] = []
        if dist.is_main:
            root = Path(cfg.run.root)
            if cfg.run.resume:
                run_dir = rundir.resume_run(cfg.run.resume, root)
                self.run_lock = rundir.RunLock(run_dir).acquire()
                point = rundir.find_resume_point(cfg.run.resume, root)
                resume_from = point.checkpoint
                rundir.sweep_leftovers(run_dir)
                if point.damaged:
                    moved = rundir.set_aside(point.damaged)
                    self.notes.append(f"{point.note}; set aside as {', '.join(p.name for p in moved)}")
            else:
                run_dir = rundir.new_run_dir(root, cfg.run.name or cfg.preset or "run")
                self.run_lock = rundir.RunLock(run_dir).acquire()
                cfg.save(run_dir / rundir.CONFIG)  # a run folder is recognisable from its first moment
                self.notes.extend(rundir.tidy_siblings(root, keep=run_dir))
        run_dir, resume_from = broadcast_object((run_dir, resume_from), dist)
        return Path(run_dir), (Path(resume_from) if resume_from else None)

    def _fit(self, cfg: TrainConfig, dist: DistInfo) -> TrainResult:
        """Set up, restore, then step until done; validation, auditions and saves come on their schedules."""
        self._set_up(cfg, dist)
        s = self._restore()
        status, message = "finished", ""
        try:
            while s.step < cfg.train.max_steps and (not cfg.train.max_tokens or s.tokens < cfg.train.max_tokens):
                applied, stop = self._step(s)
                if applied:
                    self._on_schedule(s)
                if stop:
                    status, message = "stopped", f"stopped at step {s.step} ({self._stop_reason(self.run_dir)})"
                    break
        except TrainingAborted as exc:
            self.log.write(StatusRecord(step=s.step, tokens=s.tokens, state="aborted", message=str(exc),
                                        checkpoint=_text(s.last_checkpoint)))
            return self._result("aborted", s, str(exc))
        except KeyboardInterrupt:
            return self._interrupted(s)
        return self._finish(s, status, message)

    # ---- set-up ------------------------------------------------------------------------------
    def _set_up(self, cfg: TrainConfig, dist: DistInfo) -> None:
        """Device and precision, data, run directory, model, optimizer, schedule and logs."""
        self.device = device = resolve_device(cfg.train.device, dist)
        self.autocast_dtype = resolve_precision(cfg.train.precision, device)
        if self.autocast_dtype is not None:
            self.autocast = lambda: torch.autocast(device.type, dtype=self.autocast_dtype)
        else:
            self.autocast = contextlib.nullcontext
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        self.feed = open_feed(cfg, dist, on_progress=self._prepare_progress if dist.is_main else None)
        if cfg.init_from and not cfg.run.resume:
            from engine.model.checkpoint import checkpoint_paths

            if not checkpoint_paths(cfg.init_from)[0].is_file():
                raise ConfigError(f"--init-from {cfg.init_from}: no checkpoint there; pass a .pth file (or a folder holding model.pth)")
        self.accum = cfg.accumulation_steps(dist.world_size)
        self.run_dir, self.resume_from = self._setup_run_dir(cfg, dist)
        self.lr, self.lr_final = cfg.optim.lr, cfg.optim.lr_final
        if cfg.init_from:  # fine-tuning (also when such a run is resumed)
            self.lr, self.lr_final = cfg.optim.finetune_lr, cfg.optim.finetune_lr / 10
        self._build_model(cfg, dist)
        self.optimizer = build_optimizer(self.model, cfg.optim, self.lr, device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.ema = WeightAverage(self.model, cfg.train.ema_decay) if cfg.train.ema_decay else None
        total_tokens = cfg.train.max_tokens or int(cfg.train.max_steps * cfg.train.batch_size * self.feed.mean_sample_tokens)
        self.schedule = CosineTokenSchedule(self.lr, self.lr_final, cfg.optim.warmup_steps, total_tokens)
        self._open_run_files(cfg, dist)

    def _build_model(self, cfg: TrainConfig, dist: DistInfo) -> None:
        """The model (resumed, fine-tuned or fresh), frozen where unused, compiled, and wrapped for DDP/FSDP."""
        device = self.device
        model_cfg = cfg.model.model_config(self.feed.tokenizer.vocab_size)
        if self.resume_from is not None:
            model, _ = load_checkpoint(self.resume_from, device=device, wkv_backend=cfg.train.wkv_backend)
        elif cfg.init_from:
            model = self._init_from(cfg.init_from, model_cfg, device)
        else:
            model = RWKV7(model_cfg, wkv_backend=cfg.train.wkv_backend).to(device)
        model.train()
        self.model = model
        self.frozen = freeze_unused_parameters(model, device)
        if compile_enabled(cfg.train, device.type):
            model.compile_blocks()
        if cfg.train.wkv_recompute:
            model.set_wkv_recompute()
        if cfg.train.activation_checkpointing:
            enable_activation_checkpointing(model)
        objective = TrainingObjective(model, l2wrap=cfg.train.l2wrap, fused_head=fused_head_enabled(cfg.train, device.type))
        self.fsdp = dist.enabled and cfg.train.parallel == "fsdp"
        if self.fsdp:
            objective = shard_fsdp(objective, model.blocks, device, dist)
        elif dist.enabled:
            objective = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
        self.objective = objective

    def _open_run_files(self, cfg: TrainConfig, dist: DistInfo) -> None:
        """config.toml, env.json, a cleared stop request, and the metrics log (rank 0 writes)."""
        from engine.kernels.wkv7 import resolve_backend

        run_dir = self.run_dir
        self.backend = resolve_backend(cfg.train.wkv_backend, self.device, self.model.config.head_size)
        if dist.is_main:
            cfg.save(run_dir / rundir.CONFIG)
            write_atomic(run_dir / rundir.ENV, json.dumps(environment_report(self.device, dist, self.backend), indent=2) + "\n")
            rundir.clear_stop(run_dir)  # a stop request from the previous session was already honoured
        barrier(dist)
        self.log = MetricsLog(run_dir / rundir.METRICS if dist.is_main else None, self.on_metrics if dist.is_main else None)
        if cfg.run.tensorboard and dist.is_main:
            try:
                self.log.enable_tensorboard(run_dir / "tensorboard")
            except ImportError:
                raise ConfigError("run.tensorboard needs the tensorboard package; pip install tensorboard or set run.tensorboard=false") from None

    # ---- restore -----------------------------------------------------------------------------
    def _restore(self) -> LoopState:
        """The loop state: from the resumed checkpoint (optimizer, counters, RNG) or fresh; logged."""
        s = LoopState(last_checkpoint=self.resume_from)
        if self.resume_from is not None:
            state = rundir.load_trainer_state(self.resume_from)
            load_optimizer_state(self.optimizer, state["optimizer"])  # full tensors: any world size, either mode
            s.step, s.tokens, s.cursor, s.attempts = state["step"], state["tokens"], state["cursor"], state["attempts"]
            s.bad_steps_total = state.get("bad_steps_total", 0)
            self._restore_average(state.get("ema"), s.step)
            # the schedule is rebuilt from the config: the same config continues the same curve, a
            # larger --max-steps stretches the remaining cosine over the new length
            _set_rng_state(state["rng"], self.device)
        cfg, model, feed = self.cfg, self.model, self.feed
        self.log.write(StatusRecord(
            step=s.step, tokens=s.tokens, state="resumed" if self.resume_from else "started", run_dir=str(self.run_dir),
            checkpoint=_text(self.resume_from), device=str(self.device), world_size=self.dist.world_size,
            wkv_backend=self.backend, parameters=model.parameter_count(), frozen=self.frozen, max_steps=cfg.train.max_steps,
            total_tokens=self.schedule.total_tokens, train_samples=len(feed.train), val_samples=len(feed.val),
            vocab_size=model.config.vocab_size, precision=str(self.autocast_dtype or torch.float32).replace("torch.", ""),
            init_from=cfg.init_from or None, lr=self.lr, lr_final=self.lr_final,
        ))
        notes = list(getattr(self, "notes", []))  # what resuming or tidying the runs folder did
        if self.dist.is_main and len(feed.val) == 0 and cfg.eval.val_every:
            notes.append(f"the data has no validation samples ({len(feed.train)} training samples), so no validation loss "
                         "is measured and no checkpoint can be judged by it; prepare more pieces or raise split.val_fraction")
        for note in notes:
            self.log.write(StatusRecord(step=s.step, tokens=s.tokens, state="note", message=note))
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        s.window_start = time.perf_counter()
        return s

    def _restore_average(self, saved: dict | None, step: int) -> None:
        """Continue the checkpoint's weight average, or say why it starts again or is dropped."""
        if self.ema is not None:
            note = self.ema.resume_note(saved, step)
        elif saved is not None:
            note = f"train.ema_decay is 0, so the checkpoint's weight average (decay {saved['decay']}) is not continued"
        else:
            note = ""
        if note:
            self.notes.append(note)

    # ---- step --------------------------------------------------------------------------------
    def _step(self, s: LoopState) -> tuple[bool, bool]:
        """One optimizer step, or a skipped one when the loss or gradient is not finite.

        Returns (applied, stop requested); the one host sync reads loss, stop flag and gradient norm."""
        cfg, dist, device, optimizer = self.cfg, self.dist, self.device, self.optimizer
        plan = self.feed.plan_step(s.cursor, self.accum)
        set_learning_rate(optimizer, self.schedule(s.step, s.tokens))
        loss_sum = self._forward_backward(plan, dist, poison=s.attempts in cfg.debug.nan_at_steps)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"))
        stop_local = self._stop_requested(self.run_dir) if dist.is_main else False
        sums = torch.stack([loss_sum.float(), torch.tensor(float(stop_local), device=device)])
        all_reduce_sum(sums, dist)
        grad_norm = full_tensor(grad_norm)  # a DTensor when sharded
        loss_total, stop_flag, grad_val = torch.cat([sums, grad_norm.float().view(1).to(device)]).tolist()
        loss = loss_total / plan.n_targets
        s.attempts += 1
        s.cursor += plan.n_samples
        if not (math.isfinite(loss) and math.isfinite(grad_val)):
            optimizer.zero_grad(set_to_none=True)
            s.consecutive_bad += 1
            s.bad_steps_total += 1
            self.log.write(StatusRecord(step=s.step, tokens=s.tokens, state="bad_step", loss=loss, grad_norm=grad_val,
                                        consecutive=s.consecutive_bad, bad_steps_total=s.bad_steps_total))
            if s.consecutive_bad >= cfg.run.max_bad_steps:
                raise TrainingAborted(
                    f"{s.consecutive_bad} consecutive steps had a non-finite loss or gradient; the last good checkpoint is "
                    f"{s.last_checkpoint or 'none (no checkpoint was written yet)'}; lower optim.lr or check the data, then resume from it"
                )
            return False, stop_flag > 0
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        s.consecutive_bad = 0
        s.step += 1
        s.tokens += plan.n_tokens
        s.window_tokens += plan.n_tokens
        if s.step % cfg.run.log_every == 0 or s.step == 1 or s.step == cfg.train.max_steps:
            now = time.perf_counter()
            group = optimizer.param_groups[0]
            self.log.write(TrainRecord(step=s.step, tokens=s.tokens, loss=loss, lr=group["lr"] / group["lr_scale"],
                                       grad_norm=grad_val, tokens_per_s=s.window_tokens / max(now - s.window_start, 1e-9),
                                       bad_steps_total=s.bad_steps_total, **self._memory(device)))
            s.window_tokens, s.window_start = 0, now
        return True, stop_flag > 0

    def _on_schedule(self, s: LoopState) -> None:
        """Validation, audition and checkpoint when the step is a multiple of their intervals."""
        cfg = self.cfg
        if cfg.eval.val_every and s.step % cfg.eval.val_every == 0:
            s.last_val = self._validate(s.step, s.tokens)
        if cfg.eval.audition_every and s.step % cfg.eval.audition_every == 0:
            self._audition(s.step, s.tokens)
        if cfg.run.checkpoint_every and s.step % cfg.run.checkpoint_every == 0:
            self._save(s, "periodic")

    # ---- save --------------------------------------------------------------------------------
    def _save(self, s: LoopState, reason: str) -> Path | None:
        """A checkpoint of the model and everything a resume needs; published atomically by rank 0."""
        dist, model, optimizer, feed, run_dir = self.dist, self.model, self.optimizer, self.feed, self.run_dir
        # sharded: every rank takes part in gathering the full tensors; rank 0 writes them
        model_state = full_model_state(model) if self.fsdp else None
        optimizer_state = full_optimizer_state(optimizer) if self.fsdp else None
        ema_state = self.ema.state_dict() if self.ema is not None and (self.fsdp or dist.is_main) else None
        if dist.is_main:
            trainer_state = {
                "optimizer": optimizer_state if self.fsdp else optimizer.state_dict(), "step": s.step, "tokens": s.tokens,
                "cursor": s.cursor, "attempts": s.attempts, "bad_steps_total": s.bad_steps_total,
                "schedule": self.schedule.__dict__.copy(), "rng": _rng_state(self.device), "world_size": dist.world_size,
                "config": self.cfg.to_dict(), "ema": ema_state,
            }
            s.last_checkpoint = rundir.write_checkpoint(
                run_dir, s.step,
                lambda stem, sums: save_checkpoint(model, stem, tokenizer=feed.tokenizer.to_config(), state_dict=model_state,
                                                   extra={"step": s.step, "tokens": s.tokens, "run_dir": str(run_dir)}, sums=sums),
                trainer_state, keep=self.cfg.run.keep_checkpoints, pause_s=self.cfg.debug.save_pause_s,
            )
            self.log.write(CheckpointRecord(step=s.step, tokens=s.tokens, path=str(s.last_checkpoint), reason=reason))
        barrier(dist)
        return s.last_checkpoint

    # ---- the end -----------------------------------------------------------------------------
    def _finish(self, s: LoopState, status: str, message: str) -> TrainResult:
        """A finished run validates and auditions its last step; every run ends on a checkpoint."""
        cfg = self.cfg
        try:
            if status == "finished":
                if cfg.eval.val_every and s.step % cfg.eval.val_every:
                    s.last_val = self._validate(s.step, s.tokens)
                if cfg.eval.audition_every and s.step % cfg.eval.audition_every:
                    self._audition(s.step, s.tokens)
            if s.last_checkpoint is None or rundir.checkpoint_name(s.step) != Path(s.last_checkpoint).name:
                self._save(s, "final" if status == "finished" else "stop")
        except KeyboardInterrupt:
            return self._interrupted(s)
        if self.dist.is_main:
            rundir.clear_stop(self.run_dir)
        message = message or f"finished {s.step} steps"
        self.log.write(StatusRecord(step=s.step, tokens=s.tokens, state=status, message=message,
                                    checkpoint=str(s.last_checkpoint), bad_steps_total=s.bad_steps_total))
        return self._result(status, s, "" if status == "finished" else message)

    def _interrupted(self, s: LoopState) -> TrainResult:
        """A second signal: stop at once, write nothing more than a status line."""
        message = f"interrupted twice: stopped at once without saving; the last checkpoint is {s.last_checkpoint or 'none'}"
        self.log.write(StatusRecord(step=s.step, tokens=s.tokens, state="interrupted", message=message,
                                    checkpoint=_text(s.last_checkpoint)))
        return self._result("interrupted", s, message)

    def _result(self, status: str, s: LoopState, message: str) -> TrainResult:
        return TrainResult(status, self.run_dir, s.step, s.tokens, s.last_checkpoint, message, s.bad_steps_total, s.last_val)

    # ------------------------------------------------------------------------------------------
    def _init_from(self, path: str, model_cfg: ModelConfig, device: torch.device) -> RWKV7:
        """Start from an existing checkpoint (e.g. an official text RWKV-7).

        When the checkpoint was not trained on this exact tokenizer its token ids mean something
        else, so the embedding and head rows are all re-initialised (engine.model.vocab, keep=0)
        while the body keeps its weights; the layer sizes come from the checkpoint, not the config.
        """
        from engine.model.checkpoint import CheckpointError
        from engine.model.vocab import resize_vocab

        try:
            model, sidecar = load_checkpoint(path, device=device, wkv_backend=self.cfg.train.wkv_backend)
        except CheckpointError as exc:
            raise ConfigError(f"--init-from: {exc}") from None
        same_vocabulary = sidecar.get("tokenizer") == self.feed.tokenizer.to_config() and model.config.vocab_size == model_cfg.vocab_size
        if not same_vocabulary:
            model = resize_vocab(model, model_cfg.vocab_size, keep=0, seed=self.cfg.train.seed)
        return model.to(device)

    def _prepare_progress(self, done: int, total: int, record: dict) -> None:
        """Data preparation runs before the run directory exists: report it to the callback only."""
        if self.on_metrics is not None and (done == 1 or done == total):
            self.on_metrics(StatusRecord(step=0, time=round(time.time(), 3), state="preparing", done=done, total=total,
                                         message=f"preparing data: {done}/{total} files"))

    def _stop_requested(self, run_dir: Path) -> bool:
        return (
            self.signals.requested
            or (self.stop_event is not None and self.stop_event.is_set())
            or rundir.stop_requested(run_dir)
        )

    def _stop_reason(self, run_dir: Path) -> str:
        if self.signals.requested:
            return self.signals.reason
        if self.stop_event is not None and self.stop_event.is_set():
            return "stop requested"
        return "control/stop file"

    def _forward_backward(self, plan, dist: DistInfo, poison: bool) -> torch.Tensor:
        """Run every micro-batch and time chunk of this process; return its summed loss (detached)."""
        objective, device = self.objective, self.device
        scale = dist.world_size / plan.n_targets  # DDP averages over processes
        total = torch.zeros((), device=device)
        pieces = [(mb, chunk) for mb in plan.micro_batches for chunk in mb.chunks(self.cfg.train.tbptt_len)]
        state = None
        for i, (mb, chunk) in enumerate(pieces):
            last = i == len(pieces) - 1
            sync = contextlib.nullcontext() if last or not isinstance(objective, DistributedDataParallel) else objective.no_sync()
            if self.fsdp:  # reduce-scatter the gradients once, after the last micro-batch
                objective.set_requires_gradient_sync(last)
            if chunk.first:
                state = None
            with sync:
                with self.autocast():
                    loss_sum, state = objective(*chunk.to(device), state=state, want_state=not chunk.last)
                if poison:  # fault injection for the NaN guard's tests
                    loss_sum = loss_sum * float("nan")
                (loss_sum * scale).backward()
            if state is not None:
                state = state.detach()  # truncated BPTT: the next chunk starts from values, not a graph
            total += loss_sum.detach().float()
        return total

    @staticmethod
    def _memory(device: torch.device) -> dict:
        if device.type != "cuda":
            return {"mem_alloc": None, "mem_reserved": None, "mem_peak": None}
        return {
            "mem_alloc": torch.cuda.memory_allocated(device),
            "mem_reserved": torch.cuda.memory_reserved(device),
            "mem_peak": torch.cuda.max_memory_allocated(device),
        }

    def _validate(self, step: int, tokens: int) -> dict:
        """Validate the weights, and their average when there is one (``ema_`` fields); logged."""
        result = self._validation_pass()
        if result and self.ema is not None:
            with self.ema.swapped_in():
                averaged = self._validation_pass()
            result.update(ema_val_loss=averaged["val_loss"], ema_bits_per_note=averaged["bits_per_note"])
        if result:
            self.log.write(ValRecord(step=step, tokens=tokens, **result))
        return result

    @torch.no_grad()
    def _validation_pass(self) -> dict:
        """Loss in nats per target token and bits per note over the (capped) validation split."""
        model, feed, dist = self.model, self.feed, self.dist
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # nats, targets, notes
        # sharded: the root's forward gathers the embedding and head; otherwise a plain objective
        objective = self.objective if self.fsdp else TrainingObjective(model)
        for chunk in feed.val_chunks(self.cfg.train.micro_batch_size, self.cfg.eval.val_max_batches, dist,
                                     same_count=self.fsdp):
            with self.autocast():
                loss_sum, _ = objective(*chunk.to(self.device))
            if chunk.discard:  # a sharded model's extra forward, so every process runs as many
                continue
            sums += torch.stack([loss_sum.double(), torch.tensor(chunk.n_targets, dtype=torch.float64, device=self.device),
                                 torch.tensor(chunk.n_notes, dtype=torch.float64, device=self.device)])
        all_reduce_sum(sums, dist)
        nats, n_targets, n_notes = sums.tolist()
        if self.fsdp:  # the next forward gathers the weights afresh (they may be swapped next)
            reshard(self.objective)
        model.train()
        if n_targets == 0:
            return {}
        return {
            "val_loss": nats / n_targets,
            "bits_per_note": (nats / math.log(2)) / n_notes if n_notes else None,
            "val_tokens": int(n_targets),
            "val_notes": int(n_notes),
        }

    def _audition(self, step: int, tokens: int) -> None:
        # sharded: every rank helps gather the weights; rank 0 plays from an unsharded copy
        state = full_model_state(self.model) if self.fsdp else None
        if not self.dist.is_main:
            return
        model = self.model
        if state is not None:
            model = RWKV7(model.config, init=False, wkv_backend=model.wkv_backend).to(self.device)
            model.load_state_dict(state)
        cfg = self.cfg.eval
        prompt = self.feed.audition_prompt(cfg.audition_prompt_tokens)
        if not prompt:
            return
        path = rundir.audition_path(self.run_dir, step)
        model.eval()
        try:
            with self.autocast():
                result = write_audition(model, self.feed.tokenizer, prompt, path, n_tokens=cfg.audition_tokens,
                                        temperature=cfg.audition_temperature, top_p=cfg.audition_top_p,
                                        seed=self.cfg.train.seed + step)
        except Exception as exc:  # noqa: BLE001 (a sample that does not decode must not end the run)
            self.log.write(AuditionRecord(step=step, tokens=tokens, error=f"{type(exc).__name__}: {exc}"))
        else:
            scores, scores_error = self._audition_scores(result.path)
            self.log.write(AuditionRecord(step=step, tokens=tokens, path=str(result.path), prompt_tokens=result.prompt_tokens,
                                          new_tokens=result.new_tokens, notes=result.notes, scores=scores,
                                          metrics_error=scores_error))
        finally:
            self.model.train()  # (a gathered copy needs no reset; the live model does)

    def _audition_scores(self, path: Path) -> tuple[dict, str | None]:
        """The evaluation's musical metrics for one audition, against the run's training pieces (or why not)."""
        try:
            from engine.data.store import TokenStore
            from engine.eval.report import CorpusProfile, audition_metrics, audition_summary

            if getattr(self, "_corpus_profile", None) is None:  # built once, on the first audition
                self._corpus_profile = CorpusProfile.from_store(TokenStore.open(self.feed.source), "train")
            scores = audition_summary(audition_metrics(path, self._corpus_profile))
            scores.pop("notes", None)  # already logged from the decoded sample itself
            return scores, None
        except Exception as exc:  # noqa: BLE001 (scoring is a bonus; it must never end a run)
            return {}, f"{type(exc).__name__}: {exc}"


def run_training(config: TrainConfig, on_metrics: MetricsCallback | None = None, stop_event: threading.Event | None = None) -> TrainResult:
    """Train with ``config``; usable from a spawned process (the TUI tails metrics.jsonl).

    ``on_metrics`` sees every record written to metrics.jsonl; setting ``stop_event`` (or creating
    ``control/stop`` in the run directory, or SIGINT/SIGTERM/SIGHUP) saves and stops at the next step.
    """
    return Trainer(config, on_metrics=on_metrics, stop_event=stop_event).fit()

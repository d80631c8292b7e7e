"""From command-line choices to a resolved TrainConfig (shared by the CLI and the app).

A resumed run starts from the config.toml saved in its run directory (so it continues with the
settings it had); anything given explicitly on the command line still wins.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import rundir

from .config import ConfigError, TrainConfig, load_config


def parse_override_args(args: list[str]) -> list[str]:
    """``--section.key value`` / ``--section.key=value`` words -> ``section.key=value`` strings."""
    out: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        if not word.startswith("--") or "." not in word.split("=", 1)[0]:
            raise ConfigError(f"unexpected argument {word!r}; config overrides look like --optim.lr 3e-4 (see --help for the other options)")
        key = word[2:]
        if "=" in key:
            out.append(key)
            i += 1
            continue
        if i + 1 >= len(args):
            raise ConfigError(f"override --{key} needs a value, e.g. --{key} VALUE")
        out.append(f"{key}={args[i + 1]}")
        i += 2
    return out


@dataclass(frozen=True)
class PresetChoice:
    """The preset a run gets when none is named, and the one line that tells the user why."""

    name: str
    note: str = ""


def default_preset(device: str | None = None) -> PresetChoice:
    """``small`` where CUDA will run it, ``tiny`` on a CPU.

    The small preset needs days on a laptop CPU (an ETA of 50 hours was seen on 2 cores); tiny
    finishes its 200 steps in minutes, so a first run on a machine without a GPU ends.
    """
    wanted = (device or "auto").lower()
    if wanted.startswith("cuda"):
        return PresetChoice("small")
    if wanted == "auto":
        import torch  # the config helpers stay light until a default is needed

        if torch.cuda.is_available():
            return PresetChoice("small")
        why = "no GPU found"
    else:
        why = f"training on the {wanted.upper()}"
    return PresetChoice("tiny", f"{why}: using the tiny preset, which finishes in minutes on a CPU "
                                "(the small one would take days; --preset small to insist)")


def resolve_config(
    config_path: str | Path | None = None,
    preset: str | None = None,
    overrides: list[str] | None = None,
    *,
    data: str | None = None,
    run_root: str | Path | None = None,
    max_steps: int | None = None,
    device: str | None = None,
    resume: str | None = None,
    init_from: str | Path | None = None,
) -> TrainConfig:
    """Defaults <- preset <- --config <- dotted overrides <- the named flags; validated.

    With neither a preset nor a config file (and nothing to resume), the preset is
    ``default_preset(device)``: small on a GPU, tiny on a CPU.
    """
    flags: dict[str, Any] = {}
    if data is not None:
        flags["data.path"] = str(data)
    if run_root is not None:
        flags["run.root"] = str(run_root)
    if max_steps is not None:
        flags["train.max_steps"] = max_steps
    if device is not None:
        flags["train.device"] = device
    if resume is not None:
        flags["run.resume"] = resume
    if init_from is not None:
        flags["init_from"] = str(init_from)
    if init_from is not None and resume:
        raise ConfigError("--init-from starts a new run and --resume continues one; give only one of them")

    base: TrainConfig | None = None
    if resume:
        root = Path(run_root) if run_root is not None else Path(TrainConfig().run.root)
        point = rundir.find_resume_point(resume, root)  # a RunError says why the run cannot go on
        config_file = point.run_dir / rundir.CONFIG
        if not config_file.is_file():
            raise rundir.RunError(f"run {point.run_dir} has no {rundir.CONFIG}, so its settings are unknown; start a new run instead")
        base = TrainConfig.from_toml(config_file)
        base.run.root = str(point.run_dir.parent)
    if base is None:
        if preset is None and config_path is None:
            preset = default_preset(device).name
        cfg = load_config(config_path, preset, overrides)
    else:
        cfg = base  # a resumed run keeps its own settings; a --preset does not re-apply to it
        if config_path is not None:
            cfg = TrainConfig.from_toml(config_path, base=cfg)
        if overrides:
            cfg = cfg.with_overrides(overrides)
    if max_steps is not None and max_steps <= 0:
        raise ConfigError(f"--max-steps must be greater than 0, got {max_steps}")
    return cfg.with_overrides(flags).validate()


def resume_note(cfg: TrainConfig) -> str:
    """One line when a resumed run's new step or token limit re-stretches its schedule, else "".

    The learning rate follows a cosine over the run's planned length (engine.train.schedule), and
    a resume rebuilds it from the config: a different --max-steps stretches the rest of the curve
    over the new length, so the rate rises again. That is kept (it is what "train longer" needs);
    this sentence says so before the run starts.
    """
    if not cfg.run.resume:
        return ""
    try:
        run_dir = rundir.resume_run(cfg.run.resume, Path(cfg.run.root))
        saved = TrainConfig.from_toml(run_dir / rundir.CONFIG).train
    except (rundir.RunError, ConfigError, OSError):
        return ""
    new = cfg.train
    if (saved.max_steps, saved.max_tokens) == (new.max_steps, new.max_tokens):
        return ""
    limit = (f"max_tokens {new.max_tokens:,} (the run had {saved.max_tokens:,})" if saved.max_tokens != new.max_tokens
             else f"max_steps {new.max_steps} (the run had {saved.max_steps})")
    return (f"resuming with {limit}: the learning-rate cosine is re-stretched over the new length from here, "
            "so the rate goes back up; resume without --max-steps to keep the original schedule")


# Up to this width a layer's matrices are small: split across cores, each op waits for the other
# cores' shares, which is cheap on an idle machine and ruinous on a busy one (bench/train_cpu.py).
ONE_THREAD_MAX_WIDTH = 256
# A machine counts as busy when its load average is above this many runnable processes per core.
BUSY_LOAD_PER_CORE = 1.5


def cpu_train_threads(cfg: TrainConfig, load: float | None = None, cores: int | None = None) -> int | None:
    """Torch intra-op threads for a run on the CPU, or None for torch's default (one per core).

    Measured with the tiny preset on 2 cores (bench/results/train_cpu.md): at a load average of
    about 2, two threads ran 5.6-6.4 steps/s and one thread 4.0-4.2; at about 10, two threads ran
    0.11 steps/s and one thread 1.81 (with other work on every core, each small op waited for the
    second thread's share). So a narrow model gets one thread when the machine is busy
    (``load`` above 1.5 per core, the 1-minute load average when not given). A user's own
    OMP_NUM_THREADS is kept, and so is torch's default for wider models and CUDA runs.
    """
    if "OMP_NUM_THREADS" in os.environ or cfg.model.n_embd > ONE_THREAD_MAX_WIDTH:
        return None
    device = cfg.train.device.lower()
    if device.startswith("cuda"):
        return None
    if device == "auto":
        import torch

        if torch.cuda.is_available():
            return None
    load = os.getloadavg()[0] if load is None else load
    cores = cores or os.cpu_count() or 1
    return 1 if load > BUSY_LOAD_PER_CORE * cores else None


def apply_cpu_train_threads(cfg: TrainConfig) -> int | None:
    """Set ``cpu_train_threads(cfg)`` in this process (both faces call it before training)."""
    threads = cpu_train_threads(cfg)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return threads

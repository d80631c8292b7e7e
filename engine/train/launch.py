"""From command-line choices to a resolved TrainConfig (shared by the CLI and the app).

A resumed run starts from the config.toml saved in its run directory (so it continues with the
settings it had); anything given explicitly on the command line still wins.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import checkpointing as ckpt
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
    """Defaults <- preset <- --config <- dotted overrides <- the named flags; validated."""
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
        try:
            run_dir, _ = ckpt.find_resume_point(resume, root)
        except ckpt.ResumeError:
            if resume != "auto":
                raise
        else:
            base = TrainConfig.from_toml(run_dir / "config.toml")
            base.run.root = str(run_dir.parent)
    if base is None:
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

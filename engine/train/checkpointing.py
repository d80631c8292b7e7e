"""Training checkpoints: ``checkpoints/step-XXXXXXXX/`` = model.pth + model.json (loadable by
``load_checkpoint`` / ``PianoMuseRWKV``) + trainer.pt (optimizer, schedule position, step,
tokens, RNG states, data position), and ``checkpoints/latest`` naming the newest.

Writes are atomic: everything goes into a hidden temporary folder that is renamed into place
only when complete, and ``latest`` is replaced with os.replace. A kill at any moment leaves the
previous checkpoint and the ``latest`` that names it intact.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import torch

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TRAINER_STATE = "trainer.pt"
MODEL_STEM = "model"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


class ResumeError(RuntimeError):
    """No usable checkpoint where the user pointed (one sentence saying what to do)."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(folder)


def is_complete(ckpt_dir: Path) -> bool:
    return (ckpt_dir / f"{MODEL_STEM}.pth").is_file() and (ckpt_dir / f"{MODEL_STEM}.json").is_file() and (ckpt_dir / TRAINER_STATE).is_file()


def write_checkpoint(run_dir: Path, step: int, write_model, trainer_state: dict, keep: int = 3, pause_s: float = 0.0) -> Path:
    """Write checkpoint ``step`` atomically and return its folder.

    ``write_model(stem_path)`` writes ``stem_path.pth`` and ``stem_path.json``.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write_model(tmp / MODEL_STEM)
        torch.save(trainer_state, tmp / TRAINER_STATE)
        _fsync_tree(tmp)
        if pause_s > 0:  # fault injection: a window in which tests kill or interrupt the process mid-save
            time.sleep(pause_s)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoint stays the latest
        raise
    if final.exists():  # saving the same step twice (stop right after a periodic save)
        old = root / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    marker_tmp = root / f".{LATEST}.tmp-{os.getpid()}"
    marker_tmp.write_text(final.name + "\n")
    os.replace(marker_tmp, root / LATEST)
    _fsync_dir(root)
    prune_checkpoints(run_dir, keep)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and is_complete(p)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names, or the newest complete one if the marker is missing."""
    root = Path(run_dir) / CHECKPOINTS
    marker = root / LATEST
    if marker.is_file():
        named = root / marker.read_text().strip()
        if named.is_dir() and is_complete(named):
            return named
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints (never the one ``latest`` names); drop stale temp folders."""
    root = Path(run_dir) / CHECKPOINTS
    latest = latest_checkpoint(run_dir)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        if old != latest:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)


def is_run_dir(path: Path) -> bool:
    return (Path(path) / "config.toml").is_file()


def find_resume_point(spec: str, run_root: Path) -> tuple[Path, Path]:
    """(run directory, checkpoint folder) for ``--resume auto|PATH``.

    ``auto``: ``run_root`` itself if it is a run, else its newest run that has a checkpoint.
    PATH: a run directory (its latest checkpoint) or one checkpoint folder.
    """
    if spec == "auto":
        root = Path(run_root)
        candidates = [root] if is_run_dir(root) else sorted((p for p in root.glob("*") if p.is_dir() and is_run_dir(p)), key=lambda p: p.name)
        for run in reversed(candidates):
            ckpt = latest_checkpoint(run)
            if ckpt is not None:
                return run, ckpt
        raise ResumeError(f"no run with a checkpoint found in {root}; pass --run-dir pointing at your runs folder or --resume PATH of a run")
    path = Path(spec)
    if path.is_dir() and is_complete(path) and path.parent.name == CHECKPOINTS:
        return path.parent.parent, path
    if path.is_dir() and is_run_dir(path):
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise ResumeError(f"run {path} has no complete checkpoint yet; start it again without --resume")
        return path, ckpt
    raise ResumeError(f"{path} is neither a run directory nor a checkpoint folder; pass --resume auto or a path under runs/")


def load_trainer_state(ckpt_dir: Path) -> dict:
    return torch.load(Path(ckpt_dir) / TRAINER_STATE, map_location="cpu", weights_only=False)
